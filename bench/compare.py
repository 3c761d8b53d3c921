"""medseg side by side with the plain-MONAI tutorial recipe (and nnU-Net v2 when installed), one run.

    .venv/bin/python bench/compare.py [--budget 120] [--cases 24] [--threads 2] [--repeats 3] [--write-docs]

1. Training (``bench/train_vs_monai.py``'s arms, each in its own process, same data, patch, model
   size, threads and wall-clock budget): samples/s, time to a validation mean Dice of
   ``--target-dice``, peak RSS, test Dice per region.
2. Inference on the held-out test cases, each setting in its own process (so peak RSS is its own),
   timed from reading the file to the label map on the native grid, median over ``--repeats``:
   medseg with TorchScript fp32 / bf16 autocast / ONNX Runtime / int8 ONNX, with test-time flips on
   no axis, one axis, and all three (1, 2 and 8 passes: which flips are worth their cost is measured
   here), against MONAI's ``sliding_window_inference`` with the baseline's model, and nnU-Net v2's
   CPU predictor with and without mirroring when ``--peers`` points at a venv with ``nnunetv2``
   (``make bench-peers``).
3. Memory: one 4-channel 240x240x155 case predicted under the default 4 GB cap (peak RSS).
4. Full size (``--full-size``, or alone with ``--only-full-size``): the same 240x240x155 x 4 case at
   1 mm through networks planned for 1 mm: the ``brats_msd`` preset's (``unet3d``, 128^3 patch) and
   a CPU-sized one (``unet3d_fast``, 64^3, as ``experiment=cpu``), fp32 with and without test-time
   flips and bf16, each in its own process: seconds per case (file read to label file written),
   peak RSS, and where the time goes (read, preprocess, windows = the network's calls, stitching =
   the rest of the sliding window, resampling back, post-processing, writing), side by side with
   nnU-Net v2's predictor with its own planned ``3d_fullres`` network at 1 mm (with and without
   mirroring) on the same case and threads when the peers venv exists. Weights are untrained in
   every arm of this section (timing does not depend on them; Dice is not reported).

``--write-docs`` replaces the section between ``<!-- compare:begin -->`` and
``<!-- compare:end -->`` of docs/performance.md with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_line  # noqa: E402

REGIONS = ("whole_tumour", "tumour_core", "enhancing_tumour")
#: 1 mm networks of the full-size arm: name -> (ModelConfig fields that differ from unet3d, patch)
FULL_NETWORKS = {
    "brats_msd preset (unet3d, 128^3)": ({}, [128, 128, 128]),
    "CPU-sized (unet3d_fast, 64^3)": ({"num_res_units": 0}, [64, 64, 64]),
}
#: full-size settings: name -> (precision, flip axes)
FULL_SETTINGS = {"fp32": ("fp32", []), "fp32 + flips xyz": ("fp32", [0, 1, 2]), "bf16": ("bf16", [])}


def full_settings() -> list[str]:
    """The 1 mm settings measured here: bf16 only on CPUs with native bf16 (elsewhere it is emulated,
    many times slower than fp32, and ``precision=auto`` does not choose it)."""
    from medseg.inference.precision import cpu_has_native_bf16

    return [s for s, (precision, _) in FULL_SETTINGS.items() if precision != "bf16" or cpu_has_native_bf16()]


PHASES = ("read", "preprocess", "windows", "stitching", "restore", "postprocess", "writing")
#: medseg inference settings: name -> (backend, precision, flip axes, stitching dtype)
SETTINGS = {
    "medseg fp32": ("torch", "fp32", [], "float32"),
    "medseg bf16": ("torch", "bf16", [], "float32"),
    "medseg bf16, fp16 stitching": ("torch", "bf16", [], "float16"),
    "medseg ONNX Runtime": ("onnxruntime", "fp32", [], "float32"),
    "medseg ONNX int8": ("onnxruntime-int8", "fp32", [], "float32"),
    "medseg bf16 + flip x": ("torch", "bf16", [0], "float32"),
    "medseg bf16 + flips xyz": ("torch", "bf16", [0, 1, 2], "float32"),
    "medseg fp32 + flips xyz (full TTA)": ("torch", "fp32", [0, 1, 2], "float32"),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sub(args: list[str], python: str = sys.executable, timeout: int = 3600, partial: bool = False) -> dict:
    """Run one arm in its own process; its last ``RESULT`` line. ``partial``: past ``timeout``, the
    last ``RESULT`` line it printed so far (an arm that reports after each of its settings)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "2")}
    try:
        out = subprocess.run([python, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
        stdout, stderr, ok = out.stdout, out.stderr, out.returncode == 0
    except subprocess.TimeoutExpired as e:
        if not partial:
            raise
        as_text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        stdout, stderr, ok = as_text(e.stdout), f"timed out after {timeout} s\n{as_text(e.stderr)}", True
        print(f"{' '.join(args[:1])}: timed out after {timeout} s; keeping what it reported", file=sys.stderr)
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if not ok or not line:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{stderr[-3000:]}")
    return json.loads(line[-1][7:])


def infer_medseg(artifact: Path, cases: Path, labels: Path, setting: str, threads: int, repeats: int) -> dict:
    """One medseg setting over every test case, ``repeats`` times (median per case)."""
    import numpy as np
    import torch

    from medseg.config import Device, InferenceConfig, Precision, StitchDtype
    from medseg.inference.build import build_predictor
    from medseg.inference.runtime import load_input
    from medseg.data.labels import label_spec
    from medseg.data.io.nifti import read_nifti
    from medseg.export.artifact import load_artifact
    from medseg.metrics.overlap import dice

    torch.set_num_threads(threads)
    backend, precision, flips, stitch = SETTINGS[setting]
    art = load_artifact(artifact, load_module=backend == "torch")
    inference = InferenceConfig(threads=threads, precision=Precision(precision), tta_flips=list(flips),
                                min_component_ml=None, max_memory_gb=None, device=Device.cpu,
                                stitch_dtype=StitchDtype(stitch))
    predictor = build_predictor(inference, artifact=art, backend=backend)
    regions = label_spec("msd").regions
    times: dict[str, list[float]] = {}
    scores = {r: [] for r in REGIONS}
    for rep in range(repeats):
        for f in sorted(cases.glob("*.nii.gz")):
            t = time.perf_counter()
            image, affine = load_input(f, len(art.spec.channels))
            label = predictor(image, affine, name=f.name).label
            times.setdefault(f.name, []).append(time.perf_counter() - t)
            if rep == 0:
                ref = read_nifti(labels / f.name, ndim=(3,)).data.astype(np.uint8)
                for r in REGIONS:
                    scores[r].append(dice(np.isin(label, regions[r]), np.isin(ref, regions[r])))
    per_case = [statistics.median(v) for v in times.values()]
    return {"setting": setting, "seconds_per_case": statistics.median(per_case), "peak_rss_mb": peak_rss_mb(),
            "dice": {r: float(np.mean(v)) for r, v in scores.items()}}


def infer_monai(model_path: Path, data: Path, threads: int, repeats: int) -> dict:
    """MONAI's tutorial inference with the baseline's model: transforms + sliding_window_inference."""
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet
    from monai.transforms import (Compose, EnsureChannelFirstd, Lambdad, LoadImaged, NormalizeIntensityd,
                                  Orientationd, Spacingd)

    from medseg.metrics.overlap import dice
    from train_vs_monai import MODEL, PATCH, SPACING, _regions

    torch.set_num_threads(threads)
    model = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=MODEL["channels"], strides=MODEL["strides"],
                 num_res_units=MODEL["num_res_units"], act="RELU", norm=("INSTANCE", {"affine": True}))
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    tf = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
                  Lambdad(keys="label", func=_regions), Orientationd(keys=["image", "label"], axcodes="RAS"),
                  Spacingd(keys=["image", "label"], pixdim=SPACING, mode=("bilinear", "nearest")),
                  NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    meta = json.loads((data / "dataset.json").read_text())
    files = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in meta["test"]]
    times: dict[str, list[float]] = {}
    scores = {r: [] for r in REGIONS}
    for rep in range(repeats):
        for item in files:
            t = time.perf_counter()
            d = tf(item)
            with torch.no_grad():
                out = sliding_window_inference(d["image"][None], roi_size=PATCH, sw_batch_size=4, predictor=model,
                                               overlap=0.5)
            pred = (torch.sigmoid(out)[0] > 0.5).numpy()
            times.setdefault(item["image"], []).append(time.perf_counter() - t)
            if rep == 0:
                for k, r in enumerate(REGIONS):
                    scores[r].append(dice(pred[k], d["label"][k].numpy() > 0.5))
    per_case = [statistics.median(v) for v in times.values()]
    return {"setting": "MONAI tutorial inference", "seconds_per_case": statistics.median(per_case),
            "peak_rss_mb": peak_rss_mb(), "dice": {r: float(np.mean(v)) for r, v in scores.items()}}


def write_big_case(path: Path, shape: tuple[int, int, int] = (240, 240, 155)) -> Path:
    """A BraTS-geometry case: the built-in head (1 mm) centred in a ``shape`` x 4-channel volume."""
    import nibabel as nib
    import numpy as np

    from medseg.data.synthetic import SynthConfig, generate_case

    src = np.asarray(generate_case(0, True, SynthConfig(spacing=1.0)).image, dtype=np.float32)  # (X, Y, Z, C)
    image = np.zeros((*shape, 4), dtype=np.float32)
    sl = []
    for n, m in zip(src.shape[:3], shape):
        k = min(n, m)
        sl.append((slice((n - k) // 2, (n - k) // 2 + k), slice((m - k) // 2, (m - k) // 2 + k)))
    image[sl[0][1], sl[1][1], sl[2][1]] = src[sl[0][0], sl[1][0], sl[2][0]]
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def infer_big(artifact: Path, path: Path, threads: int) -> dict:
    """The 240x240x155 4-channel case through medseg-predict's code under the default 4 GB cap
    (the case is written by the parent process, so this process's peak is the prediction's)."""
    import torch

    from medseg.config import Device, InferenceConfig
    from medseg.export.artifact import load_artifact
    from medseg.inference.build import build_predictor
    from medseg.inference.runtime import load_input

    torch.set_num_threads(threads)
    art = load_artifact(artifact)
    predictor = build_predictor(InferenceConfig(threads=threads, min_component_ml=None, device=Device.cpu),
                                artifact=art)
    before = peak_rss_mb()
    t = time.perf_counter()
    img, affine = load_input(path, 4)
    est = predictor.estimate_bytes(img.shape, affine) / 1e6
    predictor(img, affine, name="big")
    return {"setting": "240x240x155 x 4 channels", "shape": list(img.shape), "seconds_per_case": time.perf_counter() - t,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before, "estimate_extra_mb": est}


def infer_full(network: str, setting: str, path: Path, threads: int) -> dict:
    """One 1 mm network and setting on the full-size case, timed per phase (see module docstring)."""
    import torch

    from medseg.config import Device, InferenceConfig, ModelConfig, Precision
    from medseg.data.io.nifti import write_nifti
    from medseg.data.labels import label_spec
    from medseg.data.preprocess import PreprocessSpec
    from medseg.inference.predictor import CasePredictor, torch_network
    from medseg.inference.runtime import load_input
    from medseg.inference.targets import Target
    from medseg.models.unet import build_model, model_to_dict

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fields, patch = FULL_NETWORKS[network]
    precision, flips = FULL_SETTINGS[setting]
    model_cfg, target = ModelConfig(**fields), Target("labels", label_spec("msd"))
    inner = torch_network(build_model(model_cfg, 4, target.channels), torch.device("cpu"), precision)
    network_s = [0.0]

    def net(x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        y = inner(x)
        network_s[0] += time.perf_counter() - t
        return y

    spec = PreprocessSpec(channels=("FLAIR", "T1w", "t1gd", "T2w"), target_spacing=(1.0, 1.0, 1.0))
    inference = InferenceConfig(threads=threads, precision=Precision(precision), tta_flips=list(flips),
                                max_memory_gb=None, device=Device.cpu)
    predictor = CasePredictor(net, spec, patch, target, inference, model_cfg=model_to_dict(model_cfg))
    before, t = peak_rss_mb(), time.perf_counter()
    image, affine = load_input(path, 4)
    read_s = time.perf_counter() - t
    pred = predictor(image, affine, name=path.name)
    t = time.perf_counter()
    write_nifti(path.parent / f"pred_{os.getpid()}.nii.gz", pred.label, affine)
    phases = {"read": read_s, **pred.timings, "writing": time.perf_counter() - t}
    phases["stitching"] = phases["windows"] - network_s[0]
    phases["windows"] = network_s[0]
    return {"network": network, "setting": setting, "shape": list(image.shape),
            "seconds_per_case": sum(phases.values()), "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "phases": phases}


def full_size(a: argparse.Namespace, work: Path) -> str:
    """The 1 mm full-size section: medseg's networks and settings, nnU-Net v2's predictor (peers)."""
    from medseg.data.synthetic import SynthConfig, write_msd_dataset

    shape = a.full_shape
    _sub([__file__, "--infer", "writebig", "--work", str(work), "--shape", shape])
    rows = []
    for network in FULL_NETWORKS:
        for setting in full_settings():
            runs = [_sub([__file__, "--infer", "full", "--network", network, "--setting", setting, "--work",
                          str(work), "--threads", str(a.threads)]) for _ in range(a.full_repeats)]
            best = min(runs, key=lambda r: r["seconds_per_case"])  # least disturbed of the repeats
            rows.append(best)
            print(f"{network}, {setting}: {best['seconds_per_case']:.1f} s", file=sys.stderr)
    peers = Path(a.peers) / "bin" / "python"
    nnunet = []
    if peers.exists():  # nnU-Net plans its 3d_fullres network on 1 mm cases; its test case is the big one
        data = write_msd_dataset(work / "data1mm", SynthConfig(n=4, n_test=1, spacing=1.0, seed=2))
        test = json.loads((data / "dataset.json").read_text())["test"][0]["image"]
        shutil.copy(work / "big.nii.gz", data / test)
        nnunet = _sub([str(REPO / "bench" / "nnunet_arm.py"), "--data", str(data), "--work", str(work / "nnunet1mm"),
                       "--threads", str(a.threads), "--repeats", str(a.peer_repeats)], python=str(peers),
                      timeout=a.peer_timeout, partial=True)["results"]
    return _full_report(a, rows, nnunet, peers.exists())


def _full_report(a: argparse.Namespace, rows: list[dict], nnunet: list[dict], peers: bool) -> str:
    shape = rows[0]["shape"] if rows else a.full_shape
    lines = [f"**Full size, 1 mm**: one {shape} case (4 channels), {cpu_line(a.threads)}; untrained weights "
             "(timing only); best of "
             f"{a.full_repeats} run(s) per setting, each in its own process; seconds from reading the file to the "
             "label file written.", "",
             "| network | setting | s / case | peak RSS MB | " + " | ".join(PHASES) + " |",
             "|---" * (4 + len(PHASES)) + "|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['setting']} | {r['seconds_per_case']:.1f} | {r['peak_rss_mb']:.0f} | "
                     + " | ".join(f"{r['phases'][k]:.1f}" for k in PHASES) + " |")
    for r in nnunet:
        lines.append(f"| {r['setting']} | | {r['seconds_per_case']:.1f} | {r['peak_rss_mb']:.0f} | "
                     + " | ".join("–" for _ in PHASES) + " |")
    if not peers:
        lines += ["", "nnU-Net v2 at 1 mm: not measured here (no peers venv; `make bench-peers` installs it)."]
    if len(full_settings()) < len(FULL_SETTINGS):
        lines += ["", "bf16 not measured: this CPU has no native bf16 (emulated bf16 is many times slower than "
                      "fp32; `precision=auto` runs fp32 here)."]
    lines += ["", "Phases (s): windows = the network's calls; stitching = the rest of the sliding window (window "
              "extraction, Gaussian weighting, accumulation); restore = decoding and resampling back to the "
              "source grid; postprocess = small-component removal. nnU-Net's predictor is timed as a whole "
              "(model loading and worker start-up included, as a user runs it)."]
    return "\n".join(lines)


def time_to(curve: list, target: float) -> float | None:
    return next((t for t, d in curve if d >= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0)
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="inference repeats per setting (median)")
    p.add_argument("--train-repeats", type=int, default=1)
    p.add_argument("--target-dice", type=float, default=0.6, help="validation mean Dice for time-to-Dice")
    p.add_argument("--peers", default=str(REPO / ".venv-peers"), help="venv with nnunetv2 (make bench-peers)")
    p.add_argument("--peer-repeats", type=int, default=1, help="nnU-Net predictor runs per setting (slow on CPU)")
    p.add_argument("--peer-timeout", type=int, default=14400,
                   help="seconds for the 1 mm nnU-Net arm (past it: the settings it finished)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--full-size", action="store_true", help="also the 1 mm 240x240x155x4 section")
    p.add_argument("--only-full-size", action="store_true", help="only the 1 mm section (no training)")
    p.add_argument("--full-repeats", type=int, default=1, help="runs per 1 mm setting (the fastest is kept)")
    p.add_argument("--full-shape", default="240,240,155", help="the full-size case's grid (1 mm voxels)")
    p.add_argument("--infer", help=argparse.SUPPRESS)
    p.add_argument("--network", help=argparse.SUPPRESS)
    p.add_argument("--setting", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--artifact", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.infer:  # one subprocess arm
        data = Path(a.data) if a.data else None
        if a.infer == "monai":
            r = infer_monai(Path(a.model), data, a.threads, a.repeats)
        elif a.infer == "writebig":  # in its own process: the parent's RSS must stay small, because a
            shape = tuple(int(x) for x in (a.shape or "240,240,155").split(","))  # forked child starts from it
            r = {"path": str(write_big_case(Path(a.work) / "big.nii.gz", shape))}
        elif a.infer == "full":
            r = infer_full(a.network, a.setting, Path(a.work) / "big.nii.gz", a.threads)
        elif a.infer == "big":
            r = infer_big(Path(a.artifact), Path(a.work) / "big.nii.gz", a.threads)
        else:
            r = infer_medseg(Path(a.artifact), data / "imagesTs", data / "labelsTs", a.infer, a.threads, a.repeats)
        print("RESULT " + json.dumps(r))
        return
    from medseg.data.synthetic import SynthConfig, write_msd_dataset

    os.environ["BENCH_THREADS"] = str(a.threads)
    work = Path(tempfile.mkdtemp(prefix="medseg-bench-compare-"))
    if a.only_full_size:
        try:
            print(full_size(a, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        data = write_msd_dataset(work / "data", SynthConfig(n=a.cases, n_test=4, spacing=1.5, seed=1))
        train = {"monai": [], "medseg": []}
        for r in range(a.train_repeats):
            for arm in ("monai", "medseg"):
                train[arm].append(_sub([str(REPO / "bench" / "train_vs_monai.py"), "--arm", arm, "--data", str(data),
                                        "--work", str(work / f"{arm}{r}"), "--budget", str(a.budget),
                                        "--threads", str(a.threads)]))
        artifact, monai_model = train["medseg"][0]["artifact"], train["monai"][0]["model"]
        infer = [_sub([__file__, "--infer", "monai", "--model", monai_model, "--data", str(data),
                       "--threads", str(a.threads), "--repeats", str(a.repeats)])]
        for setting in SETTINGS:
            infer.append(_sub([__file__, "--infer", setting, "--artifact", artifact, "--data", str(data),
                               "--threads", str(a.threads), "--repeats", str(a.repeats)]))
        peers = Path(a.peers) / "bin" / "python"
        if peers.exists():
            for r in _sub([str(REPO / "bench" / "nnunet_arm.py"), "--data", str(data), "--work", str(work / "nnunet"),
                           "--threads", str(a.threads), "--repeats", str(a.peer_repeats)], python=str(peers),
                          timeout=7200)["results"]:
                infer.append(r)
        _sub([__file__, "--infer", "writebig", "--work", str(work)])
        big = _sub([__file__, "--infer", "big", "--artifact", artifact, "--work", str(work),
                    "--threads", str(a.threads)])
        report = _report(a, train, infer, big, peers.exists())
        if a.full_size:
            report += "\n\n" + full_size(a, work)
        print(report)
        if a.write_docs:
            doc = REPO / "docs" / "performance.md"
            text = doc.read_text()
            begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
            head, rest = text.split(begin) if begin in text else (text.rstrip() + "\n\n", end)
            tail = rest.split(end, 1)[1] if end in rest else ""
            doc.write_text(head + begin + "\n" + report + "\n" + end + tail)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report(a: argparse.Namespace, train: dict, infer: list, big: dict, peers: bool) -> str:
    med = lambda xs: statistics.median(xs)  # noqa: E731
    lines = [f"Machine: {cpu_line(a.threads)} ({platform.machine()}); {a.cases} built-in cases "
             f"({a.cases - 4} train+val, 4 test); training budget {a.budget:.0f} s per arm "
             f"({a.train_repeats} run(s)); inference medians of {a.repeats} repeats.", "",
             "```bash", f".venv/bin/python bench/compare.py --budget {a.budget:.0f} --cases {a.cases} "
             f"--threads {a.threads} --repeats {a.repeats} --train-repeats {a.train_repeats}"
             + (f" --full-size --full-repeats {a.full_repeats}" if a.full_size else "") + " --write-docs", "```", "",
             "**Training** (same data, patch, model size, threads and wall-clock budget)", "",
             f"| arm | samples/s | time to val. Dice {a.target_dice:g} | peak RSS MB | " + " | ".join(REGIONS)
             + " | mean Dice |", "|---|---|---|---|---|---|---|---|"]
    for arm, label in (("monai", "MONAI tutorial recipe"), ("medseg", "medseg")):
        runs = train[arm]
        sps = med([r["samples"] / r["seconds"] for r in runs])
        ttd = [time_to(r["val_curve"], a.target_dice) for r in runs]
        ttd_s = f"{med([t for t in ttd if t is not None]):.0f} s" if any(t is not None for t in ttd) else "not reached"
        d = {reg: med([r["dice"][reg] for r in runs]) for reg in REGIONS}
        lines.append(f"| {label} | {sps:.2f} | {ttd_s} | {med([r['peak_rss_mb'] for r in runs]):.0f} | "
                     + " | ".join(f"{d[reg]:.3f}" for reg in REGIONS) + f" | {statistics.mean(d.values()):.3f} |")
    ratio = med([r["samples"] / r["seconds"] for r in train["medseg"]]) / med(
        [r["samples"] / r["seconds"] for r in train["monai"]])
    lines += ["", f"medseg / MONAI training samples/s: {ratio:.2f}x", "",
              "**Inference** (per test case, file read to label map on the native grid)", "",
              "| setting | s / case | vs MONAI | peak RSS MB | " + " | ".join(REGIONS) + " | mean Dice |",
              "|---|---|---|---|---|---|---|---|"]
    base = next(r["seconds_per_case"] for r in infer if r["setting"].startswith("MONAI"))
    for r in infer:
        d = r.get("dice") or {}
        dice = [f"{d[reg]:.3f}" if d.get(reg) is not None else "–" for reg in REGIONS]
        mean = f"{statistics.mean(d.values()):.3f}" if d and None not in d.values() else "–"
        lines.append(f"| {r['setting']} | {r['seconds_per_case']:.2f} | {r['seconds_per_case'] / base:.2f}x | "
                     f"{r['peak_rss_mb']:.0f} | " + " | ".join(dice) + f" | {mean} |")
    if not peers:
        lines += ["", "nnU-Net v2: not measured here (no peers venv; `make bench-peers` installs it)."]
    lines += ["", f"**Memory**: a {big['setting']} case (shape {big['shape']}) predicted in "
              f"{big['seconds_per_case']:.1f} s (model at its 2 mm training spacing) with peak RSS "
              f"{big['peak_rss_mb']:.0f} MB (process with the model loaded, before the case: "
              f"{big['rss_before_mb']:.0f} MB; the predictor's estimate of the case's extra memory: "
              f"{big['estimate_extra_mb']:.0f} MB) under the default 4 GB cap (`inference.max_memory_gb`)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
