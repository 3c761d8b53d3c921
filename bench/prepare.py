"""Benchmark ``prepare``: cold (empty cache) and warm (nothing changed) runs on a BraTS-like set.

Writes 24 built-in BraTS 2021-layout cases (4 channels, about 100 x 120 x 93 voxels at 1.5 mm) once,
then times ``medseg prepare data=brats`` as a user runs it (a fresh process each time):

- cold: a new, empty cache each run (verification, planning, preprocessing of every case);
- warm: the same cache again (every case verified and preprocessed before: reused);
- one changed: one channel file of one case rewritten (only that case is redone).

Prints the median of ``--repeats`` runs of each and the warm/cold ratio.

    .venv/bin/python bench/prepare.py [--cases 24] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medseg.data.synthetic import SynthConfig  # noqa: E402
from medseg.data.synthetic_formats import write_brats_dataset  # noqa: E402


def prepare(root: Path, cache: Path, out: Path, workers: int) -> tuple[float, dict]:
    """Run ``medseg prepare`` once; return wall seconds and its summary."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "medseg.cli", "prepare", "data=brats", f"data.root={root}",
           f"paths.cache_dir={cache}", f"data.workers={workers}", f"hydra.run.dir={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return seconds, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-prepare-"))
    try:
        root = write_brats_dataset(work / "BraTS", SynthConfig(n=args.cases, n_test=0, spacing=1.5), "brats2021")
        shapes = {nib.load(p).shape for p in root.glob("*/*_flair.nii.gz")}
        median_shape = np.median(np.asarray(sorted(shapes)), axis=0).astype(int).tolist()
        cold, warm, changed = [], [], []
        stage: dict[str, list[float]] = {"cold": [], "warm": [], "changed": []}
        for r in range(args.repeats):
            cache = work / f"cache{r}"
            s, summary = prepare(root, cache, work / "out", args.workers)
            assert summary["reused_from_cache"] == 0
            cold.append(s)
            stage["cold"].append(summary["seconds"])
            s, summary = prepare(root, cache, work / "out", args.workers)
            assert summary["reused_from_cache"] == args.cases
            warm.append(s)
            stage["warm"].append(summary["seconds"])
            victim = sorted(root.glob("*/*_t2.nii.gz"))[r]
            img = nib.load(victim)
            data = np.asarray(img.dataobj).copy()
            data[data > 0] += 1
            nib.save(nib.Nifti1Image(data, img.affine, img.header), str(victim))
            s, summary = prepare(root, cache, work / "out", args.workers)
            assert summary["reused_from_cache"] == args.cases - 1
            changed.append(s)
            stage["changed"].append(summary["seconds"])
        c, w, o = (statistics.median(x) for x in (cold, warm, changed))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}")
        print(f"dataset: {args.cases} BraTS 2021-layout cases, 4 channels, median shape {median_shape}")
        print("wall time of `medseg prepare` (process start included); in brackets the stage itself")
        for label, runs, key in (("cold (empty cache)", cold, "cold"), ("warm (nothing changed)", warm, "warm"),
                                 ("one file changed", changed, "changed")):
            print(f"prepare {label:24s} median {statistics.median(runs):6.1f} s "
                  f"[{statistics.median(stage[key]):5.1f} s]   runs {[round(x, 1) for x in runs]}")
        print(f"warm / cold = {w / c:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
