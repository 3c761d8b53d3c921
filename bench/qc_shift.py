"""How well per-case QC finds the failures, on built-in cases with deliberate shifts.

    .venv/bin/python bench/qc_shift.py [--tiny] [--budget 270] [--n 36] [--n-test 12] [--out DIR]

1. ``medseg run experiment=demo`` on built-in synthetic data (``--n`` cases, ``--n-test`` held
   out; ``--budget`` seconds of training), which fits the temperature and the QC thresholds on the
   validation cases at export.
2. Every test case is predicted with the exported artifact as it is, and with four deliberate
   shifts: a multiplicative bias field (smooth, 0.5x to 1.5x), Gaussian noise (0.3 of the brain's
   intensity SD, background included), a coarser resolution (every second slice along the third
   axis: twice the slice spacing, reference subsampled alike), and a missing contrast (T1-Gd
   zeroed).
3. Prints, per shift and overall: Dice per region, how many cases the QC flag marks, the ROC AUC
   of the QC score for ``Dice < 0.8`` (whole tumour, and per region), flagged-bad / flagged-good
   counts, and the expected calibration error before and after temperature scaling (tumour band,
   model grid). Writes ``qc_shift.json`` into ``--out``.

``--tiny`` proves the script runs (a few cases, a few training iterations, 4 mm voxels): its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medseg.config import Device, InferenceConfig  # noqa: E402
from medseg.data.prepared import PreparedDataset  # noqa: E402
from medseg.data.preprocess import preprocess  # noqa: E402
from medseg.export.artifact import load_artifact  # noqa: E402
from medseg.inference.build import build_predictor  # noqa: E402
from medseg.inference.calibration import band_samples  # noqa: E402
from medseg.inference.qc import case_qc  # noqa: E402
from medseg.metrics.calibration import ReliabilityBins  # noqa: E402
from medseg.metrics.detection import roc_auc  # noqa: E402
from medseg.metrics.overlap import dice  # noqa: E402

TINY = ["data.target_spacing=[4.0,4.0,4.0]", "synth.spacing=4.0", "model.channels=[8,16,32]", "model.strides=[2,2]",
        "model.num_res_units=0", "train.patch_size=[32,32,32]", "train.max_epochs=2", "train.iters_per_epoch=3",
        "train.warmup_iters=2", "train.max_time_s=null", "train.val_every=1", "evaluate.n_figures=0"]
SHIFTS = ("none", "bias_field", "noise", "resolution", "missing_contrast")


def run_pipeline(out: Path, args: argparse.Namespace) -> Path:
    """``medseg run`` on built-in data; returns the run folder."""
    overrides = ["experiment=demo", f"data.root={out / 'data'}", f"synth.n={args.n}", f"synth.n_test={args.n_test}",
                 f"hydra.run.dir={out / 'run'}", "train.progress=false", f"paths.cache_dir={out / 'cache'}"]
    overrides += TINY if args.tiny else [f"train.max_time_s={args.budget}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "medseg", "run", *overrides], cwd=out, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"medseg run failed:\n{proc.stderr[-3000:]}")
    return out / "run"


def shifted(image: np.ndarray, label: np.ndarray, affine: np.ndarray, shift: str, channels: list[str],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One deliberate shift of a case (module docstring)."""
    image, affine = image.copy(), affine.copy()
    brain = (image != 0).any(axis=0)
    if shift == "bias_field":
        axes = [np.linspace(-1.0, 1.0, n) for n in image.shape[1:]]
        x, y, z = np.meshgrid(*axes, indexing="ij")
        field = 1.0 + 0.5 * np.clip(0.6 * x + 0.5 * y - 0.4 * z + 0.3 * x * y, -1.0, 1.0)
        image = (image * field[None]).astype(np.float32)
    elif shift == "noise":
        sd = float(image[:, brain].std())
        image = (image + rng.normal(0.0, 0.3 * sd, image.shape)).astype(np.float32)
    elif shift == "resolution":
        image, label = image[..., ::2].copy(), label[..., ::2].copy()
        affine[:3, 2] *= 2.0
    elif shift == "missing_contrast":
        k = next((i for i, c in enumerate(channels) if "gd" in c.lower() or "ce" in c.lower()), 0)
        image[k] = 0.0
    return image, label, affine


def measure(predictor, art, image, label, affine, bins: list[dict]) -> dict:
    """Predict one case; its Dice per region, QC record, and its ECE samples added to each of ``bins``."""
    pred = predictor(image, affine, name="case", details=True)
    regions = art.labels.regions
    out = {"dice": {r: dice(np.isin(pred.label, list(c)), np.isin(label, list(c))) for r, c in regions.items()}}
    out["qc"] = case_qc(image, affine, pred.label, pred.uncertainty, art.metadata.get("qc"), list(art.spec.channels))
    _, model_label, _ = preprocess(image, affine, art.spec, label=label)
    p0, p1, y = band_samples(pred.model_probs, predictor.temperature, predictor.target, model_label,
                             art.spec.target_spacing, float(art.metadata["calibration"]["band_mm"]))
    for group in bins:
        for k, r in enumerate(regions):
            group[r]["before"].add(p0[k], y[k])
            group[r]["after"].add(p1[k], y[k])
    return out


def summarise(rows: list[dict], regions: list[str], bad_dice: float) -> dict:
    """AUROC of the QC score for bad cases, flag counts, mean Dice per region."""
    scores = [r["qc"]["score"] or 0.0 for r in rows]
    flagged = [r["qc"]["review"] for r in rows]
    out = {"n": len(rows), "n_flagged": int(sum(flagged))}
    for region in regions:
        d = [r["dice"][region] if r["dice"][region] is not None else 1.0 for r in rows]
        bad = [v < bad_dice for v in d]
        out[region] = {"dice": float(np.mean(d)), "n_bad": int(sum(bad)), "auroc": roc_auc(scores, bad),
                       "flagged_bad": int(sum(b and f for b, f in zip(bad, flagged))),
                       "flagged_good": int(sum(f and not b for b, f in zip(bad, flagged)))}
    return out


def evaluate_shifts(run: Path, bad_dice: float, seed: int) -> dict:
    """Predict every test case under every shift; the summary per shift and overall."""
    prepared = PreparedDataset.read(run / "prepare")
    art = load_artifact(run / "export" / "artifact")
    predictor = build_predictor(InferenceConfig(device=Device.cpu), artifact=art)
    predictor.uncertainty = True
    regions = list(art.labels.regions)
    names = [e["name"] for e in prepared.split("test")]
    rng = np.random.default_rng(seed)
    rows, ece = [], {}
    overall = {r: {"before": ReliabilityBins(), "after": ReliabilityBins()} for r in regions}
    for shift in SHIFTS:
        bins = {r: {"before": ReliabilityBins(), "after": ReliabilityBins()} for r in regions}
        for name, (source, ref) in prepared.refs(names).items():
            case = source.load(ref)
            image, label, affine = shifted(case.image, case.label, case.affine, shift, list(prepared.channels), rng)
            rows.append({"case": name, "shift": shift,
                         **measure(predictor, art, image, label, affine, [bins, overall])})
        ece[shift] = {r: {k: b.ece() for k, b in v.items()} for r, v in bins.items()}
    ece["overall"] = {r: {k: b.ece() for k, b in v.items()} for r, v in overall.items()}
    per_shift = {s: summarise([r for r in rows if r["shift"] == s], regions, bad_dice) for s in SHIFTS}
    return {"temperature": art.metadata["calibration"]["temperature"], "bad_dice": bad_dice,
            "overall": summarise(rows, regions, bad_dice), "per_shift": per_shift, "ece": ece,
            "cases": [{"case": r["case"], "shift": r["shift"], "dice": r["dice"], "score": r["qc"]["score"],
                       "review": r["qc"]["review"], "reasons": r["qc"]["reasons"]} for r in rows]}


def report(result: dict) -> None:
    """Print the tables."""
    regions = [k for k in result["overall"] if isinstance(result["overall"][k], dict)]
    first = regions[0]
    print(f"temperature {result['temperature']}; a case is bad below Dice {result['bad_dice']}")
    print(f"{'shift':18} {'n':>3} {'flagged':>8} {'WT Dice':>8} {'bad':>4} {'AUROC':>6} {'flag-bad':>9} "
          f"{'flag-good':>10} {'ECE before':>11} {'ECE after':>10}")
    for shift, s in [*result["per_shift"].items(), ("overall", result["overall"])]:
        r = s[first]
        e = result["ece"].get(shift, {}).get(first, {})
        auroc = "–" if r["auroc"] is None else f"{r['auroc']:.3f}"
        eb = "–" if e.get("before") is None else f"{e['before']:.4f}"
        ea = "–" if e.get("after") is None else f"{e['after']:.4f}"
        print(f"{shift:18} {s['n']:>3} {s['n_flagged']:>8} {r['dice']:>8.3f} {r['n_bad']:>4} {auroc:>6} "
              f"{r['flagged_bad']:>9} {r['flagged_good']:>10} {eb:>11} {ea:>10}")
    for region in regions[1:]:
        r = result["overall"][region]
        auroc = "–" if r["auroc"] is None else f"{r['auroc']:.3f}"
        print(f"overall {region}: Dice {r['dice']:.3f}, bad {r['n_bad']}, AUROC {auroc}, "
              f"flagged bad {r['flagged_bad']}, flagged good {r['flagged_good']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="prove the script runs (meaningless figures)")
    p.add_argument("--budget", type=float, default=270.0, help="training seconds (demo experiment)")
    p.add_argument("--n", type=int, default=36)
    p.add_argument("--n-test", type=int, default=12)
    p.add_argument("--bad-dice", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = p.parse_args()
    if args.tiny:
        args.n, args.n_test = min(args.n, 8), min(args.n_test, 3)
    out = args.out or Path(tempfile.mkdtemp(prefix="qc_shift_"))
    out.mkdir(parents=True, exist_ok=True)
    run = run_pipeline(out.resolve(), args)
    result = evaluate_shifts(run, args.bad_dice, args.seed)
    (out / "qc_shift.json").write_text(json.dumps(result, indent=2))
    report(result)
    print(f"details in {out / 'qc_shift.json'}")


if __name__ == "__main__":
    main()
