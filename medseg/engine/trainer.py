"""The training loop.

One function, :func:`fit`, driven entirely by config: patches from the preprocessed cache,
Dice + cross-entropy loss, AdamW with linear warm-up and a cosine/poly/constant schedule,
sliding-window validation Dice per region every ``val_every`` epochs, best and last checkpoints
written atomically, a wall-clock budget, a progress bar, a JSONL log and TensorBoard scalars.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medseg.data.dataset import CachedCase, PatchDataset
from medseg.data.labels import LabelSpec
from medseg.engine.sliding_window import sliding_window_probs
from medseg.metrics.overlap import dice
from medseg.models.unet import build_model, check_relu_only, count_parameters, volume_patch
from medseg.utils.files import atomic_path

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    best_metric: float
    best_epoch: int
    epochs_run: int
    iterations: int
    seconds: float
    stopped_by: str
    best_checkpoint: Path
    last_checkpoint: Path


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(it: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total``."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def save_checkpoint(path: Path, model: torch.nn.Module, extra: Mapping[str, Any]) -> None:
    """Write model weights and plain-data metadata atomically (loadable with weights_only)."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "meta": json.loads(json.dumps(extra, default=str))}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code."""
    from medseg.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise DataError(path, f"not a readable medseg checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise DataError(path, "not a medseg checkpoint (keys 'model' and 'meta' missing)")
    return ckpt


def validate(model: torch.nn.Module, cases: Sequence[CachedCase], labels: LabelSpec,
             roi: Sequence[int], overlap: float, device: torch.device) -> dict[str, float]:
    """Mean Dice per region over whole preprocessed validation volumes."""
    model.eval()
    scores: dict[str, list[float]] = {r: [] for r in labels.regions}

    def net(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).cpu()

    for case in cases:
        probs = sliding_window_probs(net, torch.from_numpy(np.array(case.image)), roi,
                                     labels.num_classes, overlap=overlap, batch_size=2)
        pred = probs.argmax(0).numpy()
        ref = np.asarray(case.label)
        for region, codes in labels.regions.items():
            scores[region].append(dice(np.isin(pred, codes), np.isin(ref, codes)))
    model.train()
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}


def fit(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], train_cases: Sequence[CachedCase],
        val_cases: Sequence[CachedCase], labels: LabelSpec, in_channels: int, out_dir: Path,
        checkpoint_meta: Mapping[str, Any]) -> FitResult:
    """Train a ReLU U-Net.

    Args:
        cfg: the ``train`` config (see :class:`medseg.config.TrainConfig`).
        model_cfg: the ``model`` config.
        train_cases: cached training cases.
        val_cases: cached validation cases (may be empty: then the last epoch is the best).
        labels: label names and regions.
        in_channels: number of image channels.
        out_dir: where checkpoints and logs go.
        checkpoint_meta: extra metadata stored in every checkpoint (plan, label spec, ...).

    Returns:
        A :class:`FitResult`.
    """
    seed_everything(int(cfg["seed"]), bool(cfg["deterministic"]))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(str(getattr(cfg["device"], "value", cfg["device"])))
    model = build_model(model_cfg, in_channels, labels.num_classes).to(device)
    check_relu_only(model)
    log.info("model: MONAI UNet, ReLU, %d parameters, device %s, %d threads",
             count_parameters(model), device, torch.get_num_threads())
    patch = volume_patch(model_cfg, cfg["patch_size"])
    iters = int(cfg["iters_per_epoch"])
    bs = int(cfg["batch_size"])
    dataset = PatchDataset(train_cases, patch, iters * bs, float(cfg["fg_oversample"]),
                           dict(cfg["augment"]), int(cfg["seed"]))
    workers = int(cfg["num_workers"])
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True,
                         lambda_dice=float(cfg["dice_weight"]), lambda_ce=float(cfg["ce_weight"]))
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    max_epochs = int(cfg["max_epochs"])
    total = max_epochs * iters
    schedule = str(getattr(cfg["schedule"], "value", cfg["schedule"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, total, int(cfg["warmup_iters"]), schedule))
    budget = cfg.get("max_time_s")
    writer = _tensorboard(out_dir) if cfg.get("tensorboard") else None
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    metrics_log = out_dir / "metrics.jsonl"
    best, best_epoch, it, stopped_by = -1.0, -1, 0, "max_epochs"
    start = time.monotonic()
    bar = tqdm(total=total, desc="train", unit="it", disable=not cfg.get("progress", True),
               dynamic_ncols=True, leave=False)
    epoch = 0
    for epoch in range(max_epochs):
        dataset.set_epoch(epoch)
        model.train()
        losses = []
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            opt.step()
            sched.step()
            it += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}", best=f"{best:.3f}")
        record: dict[str, Any] = {"epoch": epoch, "iteration": it, "loss": float(np.mean(losses)),
                                  "lr": float(opt.param_groups[0]["lr"]),
                                  "elapsed_s": time.monotonic() - start}
        out_of_time = budget is not None and time.monotonic() - start >= float(budget)
        last_epoch = epoch == max_epochs - 1 or out_of_time
        if val_cases and ((epoch + 1) % int(cfg["val_every"]) == 0 or last_epoch):
            val = validate(model, val_cases, labels, patch, float(cfg["val_overlap"]), device)
            record["val_dice"] = val
            record["val_mean_dice"] = float(np.mean(list(val.values())))
        score = record.get("val_mean_dice", -float(record["loss"]) if not val_cases else None)
        meta = {**checkpoint_meta, "epoch": epoch, "iteration": it, "val": record.get("val_dice")}
        if score is not None and score > best:
            best, best_epoch = float(score), epoch
            save_checkpoint(best_path, model, {**meta, "best_metric": best})
        save_checkpoint(last_path, model, meta)
        with open(metrics_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            writer.add_scalar("train/loss", record["loss"], epoch)
            writer.add_scalar("train/lr", record["lr"], epoch)
            for r, v in record.get("val_dice", {}).items():
                writer.add_scalar(f"val/dice_{r}", v, epoch)
        log.info("epoch %d: loss %.4f%s", epoch, record["loss"],
                 f", val mean Dice {record['val_mean_dice']:.4f} {_fmt(record['val_dice'])}"
                 if "val_dice" in record else "")
        if out_of_time:
            stopped_by = "max_time_s"
            break
    bar.close()
    if writer is not None:
        writer.close()
    if not best_path.exists():  # no validation and no epoch finished: keep the last weights
        save_checkpoint(best_path, model, {**checkpoint_meta, "epoch": epoch, "iteration": it})
    return FitResult(best_metric=best, best_epoch=best_epoch, epochs_run=epoch + 1, iterations=it,
                     seconds=time.monotonic() - start, stopped_by=stopped_by,
                     best_checkpoint=best_path, last_checkpoint=last_path)


def _fmt(d: Mapping[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.3f}" for k, v in d.items()) + ")"


def _tensorboard(out_dir: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs go to JSONL only
        log.warning("tensorboard is not installed; writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))
