"""What missing-contrast training costs and buys, on built-in data at an equal budget.

    .venv/bin/python bench/missing_contrast.py [--budget 270] [--cases 24] [--prob 0.5] [--threads 2] [--write-docs]

Two arms train the ``demo`` preset on the same built-in cases (``--cases``, 4 of them held out for
the test) for the same wall-clock budget: without channel dropout, and with
``train.augment.channel_dropout_prob=--prob`` (one contrast dropped at a time). Each arm's best
checkpoint is then evaluated on the test cases with every contrast, and with each single contrast
missing (``evaluate.drop_channels=[c]``: zeroed after normalisation, as the predictor feeds a
missing contrast). The table gives the mean Dice over the three BraTS regions for each pattern,
and the full-contrast Dice cost of dropout (no dropout minus dropout): the rule of issue 15 is to
turn dropout on by default for multi-contrast models when that cost is <= 0.01.

``--write-docs`` replaces the section between ``<!-- missing-contrast:begin -->`` and
``<!-- missing-contrast:end -->`` of docs/performance.md with the table. ``--tiny`` shrinks the
model, spacing and patch to smoke-test the script in a minute or two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medseg.data.synthetic import SynthConfig, write_msd_dataset  # noqa: E402

REGIONS = ("whole_tumour", "tumour_core", "enhancing_tumour")
CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
TINY = ["data.target_spacing=[4.0,4.0,4.0]", "model.channels=[8,16,32]", "model.strides=[2,2]",
        "model.num_res_units=0", "train.patch_size=[32,32,32]", "train.warmup_iters=2", "train.val_every=1",
        "evaluate.n_figures=0"]
BEGIN, END = "<!-- missing-contrast:begin -->", "<!-- missing-contrast:end -->"


def medseg(args: list[str], threads: int) -> None:
    """Run ``python -m medseg ARGS`` (fails loudly with its last output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "medseg", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=7200)
    if proc.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")


def mean_dice(metrics_json: Path) -> float:
    """Mean test Dice over the three BraTS regions."""
    summary = json.loads(metrics_json.read_text())["summary"]
    return sum(summary[r]["dice"]["mean"] for r in REGIONS) / len(REGIONS)


def run_arm(a: argparse.Namespace, data: Path, work: Path, prob: float) -> dict[str, float]:
    """Train one arm for the budget, then evaluate every missing-contrast pattern."""
    out = work / f"p{prob:g}"
    common = [f"train.threads={a.threads}", "train.progress=false", "train.tensorboard=false", "data.workers=1",
              *(TINY if a.tiny else [])]
    medseg(["run", "experiment=demo", "synth.enabled=false", f"data.root={data}", f"hydra.run.dir={out}",
            f"train.max_time_s={a.budget}", "train.max_epochs=100000", f"train.augment.channel_dropout_prob={prob}",
            "train.augment.channel_dropout_max=1", *common], a.threads)
    dice = {"all contrasts": mean_dice(out / "evaluate" / "metrics.json")}
    for c in CHANNELS:
        ev = work / f"p{prob:g}_without_{c}"
        medseg(["evaluate", "experiment=demo", "synth.enabled=false", f"data.root={data}", f"hydra.run.dir={ev}",
                f"paths.checkpoint={out / 'train' / 'best.pt'}", f"paths.prepared={out / 'prepare'}",
                f"evaluate.drop_channels=[{c}]", *common], a.threads)
        dice[f"without {c}"] = mean_dice(ev / "metrics.json")
    return dice


def report(a: argparse.Namespace, arms: dict[str, dict[str, float]]) -> str:
    """The Markdown table and the decision line."""
    patterns = list(next(iter(arms.values())))
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, {a.threads} threads; {a.cases} built-in cases "
             f"({a.cases - 4} train+val, 4 test); {a.budget:.0f} s of training per arm"
             + (" (--tiny: smoke-test sizes)" if a.tiny else "") + ".", "",
             "```bash", f".venv/bin/python bench/missing_contrast.py --budget {a.budget:.0f} --cases {a.cases} "
             f"--prob {a.prob:g} --threads {a.threads}" + (" --tiny" if a.tiny else "") + " --write-docs", "```", "",
             "Mean test Dice over whole tumour, tumour core and enhancing tumour:", "",
             "| training | " + " | ".join(patterns) + " |", "|---" * (len(patterns) + 1) + "|"]
    for arm, dice in arms.items():
        lines.append(f"| {arm} | " + " | ".join(f"{dice[p]:.3f}" for p in patterns) + " |")
    base, drop = (d["all contrasts"] for d in arms.values())
    cost = base - drop
    verdict = "<= 0.01: dropout can be on by default" if cost <= 0.01 else "> 0.01: keep dropout in the preset"
    lines += ["", f"Full-contrast Dice cost of dropout: {cost:+.3f} ({verdict})."]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace the marked section of docs/performance.md (appended when absent)."""
    doc = REPO / "docs" / "performance.md"
    current = doc.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    else:
        current = (current.rstrip() + "\n\n## Missing contrasts: channel dropout\n\n" + BEGIN + "\n" + text + "\n"
                   + END + "\n")
    doc.write_text(current)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=270.0, help="training seconds per arm")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--prob", type=float, default=0.5, help="channel_dropout_prob of the dropout arm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes (4 mm, small U-Net, 32^3 patches)")
    p.add_argument("--write-docs", action="store_true")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medseg-missing-"))
    try:
        data = write_msd_dataset(work / "data", SynthConfig(n=a.cases, n_test=4, spacing=4.0 if a.tiny else 1.5))
        arms = {"no dropout": run_arm(a, data, work, 0.0), f"dropout p={a.prob:g}": run_arm(a, data, work, a.prob)}
        text = report(a, arms)
        print(text)
        if a.write_docs:
            write_docs(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
