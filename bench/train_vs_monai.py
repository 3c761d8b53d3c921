"""medseg's trainer against a plain-MONAI baseline written the way MONAI's BraTS tutorial trains.

Same built-in data (MSD Task01 layout), same target spacing, patch, batch, U-Net (MONAI ``UNet``,
ReLU, same channels / strides / residual units), same number of threads and the same wall-clock
budget; each arm runs in its own process so that peak RSS is its own. Printed per arm: training
samples per second (patches fed to the network / wall time from the first data access to the end
of training, caching, preprocessing and validation included), peak RSS, and Dice per BraTS region
on the held-out test cases after the budget.

Baseline (``--arm monai``), following MONAI's ``brats_segmentation_3d`` tutorial:
``LoadImaged -> EnsureChannelFirstd -> labels to WT/TC/ET channels -> Orientationd(RAS) ->
Spacingd -> RandSpatialCropd -> RandFlipd x3 -> NormalizeIntensityd(nonzero, channel-wise) ->
RandScaleIntensityd -> RandShiftIntensityd`` in a ``CacheDataset`` (everything before the first
random transform cached), ``DiceLoss(sigmoid)``, ``Adam`` (lr 1e-4, weight decay 1e-5) with cosine
annealing, validation with ``sliding_window_inference`` (the tutorial validates every epoch of
388 cases; here, where an epoch is a handful of cases, both arms validate every
``VAL_EVERY_ITERS`` iterations so that validation costs them the same). The label conversion is
written for the MSD Task01 codes (MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` assumes
the BraTS 2018-2021 codes and would be wrong here). Its Dice is measured on its resampled grid.

medseg (``--arm medseg``): ``prepare`` (cold cache) + ``train`` with its defaults for the rest,
``evaluate`` on the native grid (of ``best.pt``, the exported checkpoint; the result's ``last``
holds the same for ``last.pt``, the final weights, evaluated after the timing), with the
small-enhancing rule fitted on validation; ``enhancing_rule`` records its threshold and, where it is
on, the same checkpoint's test Dice without it.

    .venv/bin/python bench/train_vs_monai.py [--budget 120] [--cases 16] [--threads 2] [--repeats 1]
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

SPACING = [2.0, 2.0, 2.0]
PATCH = [64, 64, 64]
BATCH = 2
MODEL = {"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 0,
         "norm": "instance", "dropout": 0.0}
REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (2, 3), "enhancing_tumour": (3,)}
ITERS_PER_EPOCH = 40
VAL_EVERY_ITERS = 200


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_medseg(data: Path, work: Path, budget: float, threads: int, extra: list[str] | None = None) -> dict:
    """prepare + train (+ evaluate, not timed) through medseg's own stage functions."""
    from medseg.cli import compose_config
    from medseg.stages.common import run_in_dir
    from medseg.stages.evaluate import evaluate_stage
    from medseg.stages.export import export_stage
    from medseg.stages.prepare import prepare_stage
    from medseg.stages.train import train_stage
    from omegaconf import open_dict

    overrides = [f"paths.root={work}", f"paths.output_dir={work}", f"data.root={data}", f"data.target_spacing={SPACING}", "model=unet3d_fast",
                 f"train.patch_size={PATCH}", f"train.batch_size={BATCH}", f"train.max_time_s={budget}",
                 "train.max_epochs=10000", f"train.iters_per_epoch={ITERS_PER_EPOCH}",
                 f"train.val_every={VAL_EVERY_ITERS // ITERS_PER_EPOCH}", f"train.threads={threads}",
                 "train.progress=false", "train.tensorboard=false", "train.warmup_iters=40", "data.workers=2",
                 f"paths.cache_dir={work / 'cache'}", f"evaluate.inference.threads={threads}", "evaluate.n_figures=0", *(extra or [])]
    cfg = compose_config(overrides)
    start = time.monotonic()
    with open_dict(cfg):
        run_in_dir(prepare_stage, cfg, work / "prepare", clean_dir=True)
        cfg.paths.prepared = str(work / "prepare")
        _, train = run_in_dir(train_stage, cfg, work / "train", clean_dir=True)
        seconds = time.monotonic() - start
        cfg.paths.checkpoint = train["best_checkpoint"]
        _, ev = run_in_dir(evaluate_stage, cfg, work / "evaluate", clean_dir=True)
        rss = peak_rss_mb()
        # the final weights too (last.pt, not exported): what choosing the checkpoint by a noisy
        # validation Dice gains or loses against keeping the end of the schedule
        cfg.paths.checkpoint = train["last_checkpoint"]
        _, ev_last = run_in_dir(evaluate_stage, cfg, work / "evaluate_last", clean_dir=True)
        # the small-enhancing rule (threshold fitted on validation): the same weights scored without
        # it where it is on, for a paired figure of what it gains
        rule = {k: without_rule(cfg, work, k) for k in ("evaluate", "evaluate_last")}
        cfg.paths.checkpoint = train["best_checkpoint"]
        cfg.paths.metrics = str(work / "evaluate" / "metrics.json")
        cfg.export.int8 = True
        run_in_dir(export_stage, cfg, work / "export", clean_dir=True)
    epochs = [json.loads(x) for x in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    # prepare ran before training: validation times count from the start of prepare, as for MONAI
    prep_s = seconds - train["seconds"]
    curve = [(prep_s + e["elapsed_s"], e["val_mean_dice"]) for e in epochs if "val_mean_dice" in e]
    return {"arm": "medseg", "samples": train["iterations"] * BATCH, "seconds": seconds,
            "loop_seconds": sum(e["train_s"] for e in epochs), "val_curve": curve,
            "dice": ev["dice"], "cases": test_cases(work / "evaluate" / "metrics.json"),
            "peak_rss_mb": rss, "artifact": str(work / "export" / "artifact"), "best_epoch": train["best_epoch"],
            "epochs": train["epochs"], "best_ema": float(cfg.train.best_ema),
            "enhancing_rule": rule["evaluate"],
            "last": {"dice": ev_last["dice"], "cases": test_cases(work / "evaluate_last" / "metrics.json"),
                     "enhancing_rule": rule["evaluate_last"]}}


def without_rule(cfg, work: Path, folder: str) -> dict:
    """The small-enhancing rule of the evaluation in ``work/folder`` (its fitted threshold, the test
    cases it relabelled) and, where it is on, the test Dice of the same checkpoint without it."""
    from medseg.stages.common import run_in_dir
    from medseg.stages.evaluate import evaluate_stage

    metrics = json.loads((work / folder / "metrics.json").read_text())
    post = metrics.get("postprocessing") or {}
    out = {"min_enhancing_ml": post.get("min_enhancing_ml", 0.0), "cases_relabelled": post.get("cases_relabelled", {}),
           "val_fit": {k: (post.get("enhancing_fit") or {}).get(k) for k in ("mean_dice_before", "mean_dice_after",
                                                                            "cases_relabelled")}}
    if out["min_enhancing_ml"] > 0:
        cfg.paths.checkpoint = metrics["checkpoint"]
        configured = cfg.evaluate.inference.min_enhancing_ml
        cfg.evaluate.inference.min_enhancing_ml = 0.0
        _, ev = run_in_dir(evaluate_stage, cfg, work / f"{folder}_norule", clean_dir=True)
        cfg.evaluate.inference.min_enhancing_ml = configured  # the export after this ships what was scored
        out["without"] = {"dice": ev["dice"], "cases": test_cases(work / f"{folder}_norule" / "metrics.json")}
    return out


def test_cases(metrics: Path) -> dict[str, dict[str, list[float]]]:
    """Per test case and region of ``evaluate``'s ``metrics.json``: [Dice, reference volume in ml]
    (volume 0: the region is absent from the reference, scored 1 if the prediction is empty too,
    else 0: the BraTS convention). Every scored case, those whose prediction failed (scored as an
    empty prediction) included, as in the summary's mean."""
    cases = json.loads(metrics.read_text())["cases"]
    return {c["case"]: {r: [c[r]["dice"], c[r]["volume_ref_ml"]] for r in REGIONS} for c in cases}


def _regions(label):
    import torch

    return torch.stack([torch.isin(label[0], torch.tensor(codes)) for codes in REGIONS.values()]).float()


def run_monai(data: Path, budget: float, threads: int, work: Path | None = None) -> dict:
    """The tutorial-style baseline (see module docstring)."""
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet
    from monai.transforms import (Compose, EnsureChannelFirstd, Lambdad, LoadImaged, NormalizeIntensityd,
                                  Orientationd, RandFlipd, RandScaleIntensityd, RandShiftIntensityd,
                                  RandSpatialCropd, Spacingd)

    from medseg.metrics.overlap import dice

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    work = Path(work or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "dataset.json").read_text())
    train_files = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in meta["training"]]
    test_files = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in meta["test"]]
    val_files, train_files = train_files[:3], train_files[3:]
    base = [LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
            Lambdad(keys="label", func=_regions), Orientationd(keys=["image", "label"], axcodes="RAS"),
            Spacingd(keys=["image", "label"], pixdim=SPACING, mode=("bilinear", "nearest"))]
    train_tf = Compose(base + [
        RandSpatialCropd(keys=["image", "label"], roi_size=PATCH, random_size=False),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0)])
    val_tf = Compose(base + [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    start = time.monotonic()
    train_ds = CacheDataset(train_files, train_tf, cache_rate=1.0, num_workers=threads, progress=False)
    val_ds = CacheDataset(val_files, val_tf, cache_rate=1.0, num_workers=threads, progress=False)
    loader = DataLoader(train_ds, batch_size=BATCH, shuffle=True, num_workers=0)
    model = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=MODEL["channels"], strides=MODEL["strides"],
                 num_res_units=MODEL["num_res_units"], act="RELU", norm=("INSTANCE", {"affine": True}))
    loss_fn = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
    opt = torch.optim.Adam(model.parameters(), 1e-4, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    samples = 0

    def infer(x):
        return sliding_window_inference(x, roi_size=PATCH, sw_batch_size=4, predictor=model, overlap=0.5)

    loop_seconds = 0.0
    last_val = 0
    curve = []
    while time.monotonic() - start < budget:
        model.train()
        t_loop = time.monotonic()
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            samples += batch["image"].shape[0]
        loop_seconds += time.monotonic() - t_loop
        sched.step()
        if samples // BATCH - last_val >= VAL_EVERY_ITERS:
            last_val = samples // BATCH
            model.eval()
            scores = []
            with torch.no_grad():
                for item in val_ds:
                    pred = torch.sigmoid(infer(item["image"][None]))[0] > 0.5
                    scores += [dice(pred[k].numpy(), item["label"][k].numpy() > 0.5) for k in range(len(REGIONS))]
            curve.append((time.monotonic() - start, float(np.mean(scores))))
    seconds = time.monotonic() - start
    model.eval()
    scores = {r: [] for r in REGIONS}
    with torch.no_grad():
        for item in CacheDataset(test_files, val_tf, cache_rate=1.0, num_workers=threads, progress=False):
            pred = torch.sigmoid(infer(item["image"][None]))[0] > 0.5
            for k, r in enumerate(REGIONS):
                scores[r].append(dice(pred[k].numpy(), item["label"][k].numpy() > 0.5))
    torch.save(model.state_dict(), Path(work) / "monai_unet.pt")
    return {"arm": "monai", "samples": samples, "seconds": seconds, "loop_seconds": loop_seconds, "val_curve": curve,
            "dice": {r: float(np.mean(v)) for r, v in scores.items()}, "peak_rss_mb": peak_rss_mb(),
            "model": str(Path(work) / "monai_unet.pt")}


def arm_main(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.arm == "medseg":
        result = run_medseg(Path(args.data), work, args.budget, args.threads, args.set)
    else:
        result = run_monai(Path(args.data), args.budget, args.threads, work)
    result["samples_per_s"] = result["samples"] / result["seconds"]
    result["loop_samples_per_s"] = result["samples"] / result["loop_seconds"]
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="training wall-clock seconds per arm")
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--arm", choices=["medseg", "monai"])
    parser.add_argument("--data")
    parser.add_argument("--work")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE",
                        help="extra Hydra override for the medseg arm (repeatable), e.g. --set train.prefetch=0")
    args = parser.parse_args()
    if args.arm:
        arm_main(args)
        return
    from medseg.data.synthetic import SynthConfig, write_msd_dataset

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-train-"))
    try:
        data = write_msd_dataset(work / "data", SynthConfig(n=args.cases, n_test=4, spacing=1.5, seed=1))
        runs: dict[str, list[dict]] = {"monai": [], "medseg": []}
        for r in range(args.repeats):
            for arm in ("monai", "medseg"):
                out = subprocess.run([sys.executable, __file__, "--arm", arm, "--data", str(data),
                                      "--work", str(work / f"{arm}{r}"), "--budget", str(args.budget),
                                      "--threads", str(args.threads), *(f"--set={o}" for o in args.set)], cwd=REPO, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)})
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if out.returncode != 0 or not line:
                    raise SystemExit(f"{arm} arm failed:\n{out.stderr[-3000:]}")
                runs[arm].append(json.loads(line[-1][7:]))
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}; "
              f"{args.cases} built-in cases ({args.cases - 4} train+val, 4 test), spacing {SPACING} mm, patch {PATCH}, "
              f"batch {BATCH}, UNet channels {MODEL['channels']}, budget {args.budget:.0f} s, {args.repeats} run(s)")
        med = {arm: {k: statistics.median(x[k] for x in v) for k in ("samples_per_s", "loop_samples_per_s",
                                                                     "peak_rss_mb")}
               for arm, v in runs.items()}
        dice = {arm: {r: statistics.median(x["dice"][r] for x in v) for r in REGIONS} for arm, v in runs.items()}
        print("samples/s: patches per second of wall time (caching, preprocessing, validation included); "
              "loop: inside the training loop only")
        print(f"{'arm':8} {'samples/s':>10} {'loop':>6} {'peak RSS MB':>12} " + " ".join(f"{r:>17}" for r in REGIONS)
              + "  mean Dice")
        for arm in ("monai", "medseg"):
            d = dice[arm]
            print(f"{arm:8} {med[arm]['samples_per_s']:10.2f} {med[arm]['loop_samples_per_s']:6.2f} "
                  f"{med[arm]['peak_rss_mb']:12.0f} "
                  + " ".join(f"{d[r]:17.3f}" for r in REGIONS) + f"  {statistics.mean(d.values()):.3f}")
        print(f"medseg / monai samples/s = {med['medseg']['samples_per_s'] / med['monai']['samples_per_s']:.2f} "
              f"(training loop only: {med['medseg']['loop_samples_per_s'] / med['monai']['loop_samples_per_s']:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
