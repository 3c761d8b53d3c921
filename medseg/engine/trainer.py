"""The training loop.

One function, :func:`fit`, driven entirely by config (no subclassing): patches from the
preprocessed cache, label-wise softmax or region-wise sigmoid targets, Dice + CE or Dice + focal
loss, AdamW with warm-up and cosine decay or SGD with Nesterov momentum and polynomial decay,
gradient clipping, mixed precision, optional ``torch.compile``, sliding-window validation Dice per
region every ``val_every`` epochs with early stopping, and the full training state saved
atomically every epoch so that ``train.resume=auto`` continues after a crash or ``kill -9``.
DistributedDataParallel is used when started by ``torchrun`` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import functools
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
from torch.utils.data import DataLoader

from medseg.config import choice
from medseg.data.dataset import CachedCase, PatchDataset
from medseg.engine.prefetch import ThreadPrefetcher
from medseg.engine.losses import SegmentationLoss
from medseg.engine.logging import TrainingLog
from medseg.inference.sliding_window import sliding_window_probs
from medseg.engine.state import BackgroundWriter, latest_state, rng_state, save_state, set_rng_state, snapshot
from medseg.inference.predictor import pick_device
from medseg.inference.precision import autocast, autocast_dtype
from medseg.inference.targets import Target
from medseg.errors import ConfigError, DataError
from medseg.metrics.overlap import dice
from medseg.models.unet import build_model, check_relu_only, describe_model, volume_patch
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
    resumed_from: str | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def lr_factor(it: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total`` (after linear warm-up)."""
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def save_checkpoint(path: Path, model: torch.nn.Module | Mapping[str, torch.Tensor], extra: Mapping[str, Any]) -> None:
    """Write model weights (a module or its state dict) and plain-data metadata atomically
    (loadable with weights_only)."""
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    with atomic_path(path) as tmp:
        torch.save({"model": weights, "meta": json.loads(json.dumps(extra, default=str))}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code."""
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


def validate(model: torch.nn.Module, cases: Sequence[CachedCase], target: Target,
             roi: Sequence[int], overlap: float, device: torch.device,
             dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean Dice per region over whole preprocessed validation volumes (network under autocast
    to ``dtype``, as in training, when given)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {r: [] for r in target.labels.regions}

    def net(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(x.to(device)).float().cpu()

    for case in cases:
        probs = sliding_window_probs(net, torch.from_numpy(np.array(case.image)), roi, target.channels,
                                     overlap=overlap, batch_size=2, activation=target.activation)
        pred = target.decode(probs)
        ref = np.asarray(case.label)
        for region, codes in target.labels.regions.items():
            scores[region].append(dice(np.isin(pred, codes), np.isin(ref, codes)))
    model.train(was_training)
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}


# --- distributed -------------------------------------------------------------------------------

def distributed_env() -> tuple[int, int]:
    """``(rank, world_size)`` from the variables torchrun sets; ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _all_mean(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- precision ---------------------------------------------------------------------------------

# --- the loop ----------------------------------------------------------------------------------

def build_optimizer(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (nnU-Net's choice), from ``train``."""
    name = choice(cfg["optimizer"])
    # fused kernels (one pass over each parameter, CPU and CUDA): same update, fewer passes
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                   for p in model.parameters()) else {}
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                               nesterov=True, weight_decay=float(cfg["weight_decay"]), **fused)
    return torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                             **fused)


def fit(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], train_cases: Sequence[CachedCase],
        val_cases: Sequence[CachedCase], target: Target, in_channels: int, out_dir: Path,
        checkpoint_meta: Mapping[str, Any]) -> FitResult:
    """Train a ReLU U-Net (see the module docstring).

    Args:
        cfg: the ``train`` config (see :class:`medseg.config.TrainConfig`).
        model_cfg: the ``model`` config.
        train_cases: cached training cases.
        val_cases: cached validation cases (may be empty: then the lowest loss picks the best).
        target: label-wise or region-wise output.
        in_channels: number of image channels.
        out_dir: where checkpoints, states and logs go.
        checkpoint_meta: extra metadata stored in every checkpoint (plan, target, ...).

    Returns:
        A :class:`FitResult`.
    """
    rank, world = distributed_env()
    seed_everything(int(cfg["seed"]), bool(cfg["deterministic"]))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(choice(cfg["device"]))
    if world > 1:
        _init_distributed(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    model = build_model(model_cfg, in_channels, target.channels).to(device)
    check_relu_only(model)
    patch = volume_patch(model_cfg, cfg["patch_size"])
    if rank == 0:
        log.info("%s; device %s, %d threads, %d process(es)", describe_model(model, model_cfg, patch, in_channels,
                 target.channels, int(cfg["batch_size"])), device, torch.get_num_threads(), world)
    iters, bs = int(cfg["iters_per_epoch"]), int(cfg["batch_size"])
    dataset = PatchDataset(train_cases, patch, iters * bs * world, float(cfg["fg_oversample"]),
                           dict(cfg["augment"]), int(cfg["seed"]))
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    workers = int(cfg["num_workers"])
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    prefetch = cfg.get("prefetch")
    # on CPU, a helper thread competes with the network for the same cores: measured slower than
    # preparing each batch in turn (bench/train_vs_monai.py --set train.prefetch=2)
    prefetch = int(prefetch) if prefetch is not None else (2 if device.type == "cuda" else 0)
    batches = ThreadPrefetcher(loader, prefetch) if workers == 0 and prefetch > 0 else loader
    loss_fn = SegmentationLoss(target, choice(cfg["loss"]), float(cfg["dice_weight"]),
                               float(cfg["ce_weight"]), float(cfg["focal_gamma"]))
    opt = build_optimizer(model, cfg)
    max_epochs = int(cfg["max_epochs"])
    schedule = choice(cfg["schedule"])
    total, warmup = max_epochs * iters, int(cfg["warmup_iters"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warmup, schedule))
    dtype = autocast_dtype(choice(cfg["precision"]), device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    states_dir = out_dir / "states"
    progress = {"epoch": 0, "iteration": 0, "best": -math.inf, "best_epoch": -1, "stale": 0}
    resumed_from = _resume(cfg, out_dir, states_dir, model, opt, sched, scaler, progress, rank)
    ddp_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(ddp_model) if cfg.get("compile") else ddp_model
    logger = TrainingLog(out_dir, cfg, total, progress["epoch"], progress["iteration"], enabled=rank == 0)
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    budget = cfg.get("max_time_s")
    patience = cfg.get("patience")
    start = time.monotonic()
    stopped_by = "max_epochs"
    epoch = progress["epoch"]
    writer = BackgroundWriter()
    for epoch in range(progress["epoch"], max_epochs):
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        losses, wait, t_epoch = [], 0.0, time.monotonic()
        t_data = time.monotonic()
        for x, y in batches:
            wait += time.monotonic() - t_data
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = loss_fn(step_model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
            scaler.step(opt)
            scaler.update()
            sched.step()
            progress["iteration"] += 1
            losses.append(float(loss.detach()))
            logger.step(epoch, losses, progress["best"])
            t_data = time.monotonic()
        record: dict[str, Any] = {"epoch": epoch, "iteration": progress["iteration"],
                                  "loss": _all_mean(float(np.mean(losses)), world, device),
                                  "lr": float(opt.param_groups[0]["lr"]),
                                  "data_wait_fraction": wait / max(time.monotonic() - t_epoch, 1e-9),
                                  "train_s": time.monotonic() - t_epoch,
                                  "elapsed_s": time.monotonic() - start}
        out_of_time = budget is not None and time.monotonic() - start >= float(budget)
        last_epoch = epoch == max_epochs - 1 or out_of_time
        if val_cases and ((epoch + 1) % int(cfg["val_every"]) == 0 or last_epoch):
            val = (validate(model, val_cases, target, patch, float(cfg["val_overlap"]), device, dtype)
                   if rank == 0 else None)
            val = _broadcast(val, world)
            record["val_dice"] = val
            record["val_mean_dice"] = float(np.mean(list(val.values())))
        score = record.get("val_mean_dice", -record["loss"] if not val_cases else None)
        meta = {**checkpoint_meta, "epoch": epoch, "iteration": progress["iteration"], "val": record.get("val_dice")}
        improved = False
        if score is not None:
            if score > progress["best"]:
                progress["best"], progress["best_epoch"], progress["stale"] = float(score), epoch, 0
                improved = True
            elif "val_dice" in record:
                progress["stale"] += 1
        progress["epoch"] = epoch + 1
        if rank == 0:  # snapshot now, write in the background while the next epoch trains
            weights = snapshot(model.state_dict())
            state = {**snapshot({k: v for k, v in _state(model, opt, sched, scaler, progress).items()
                                 if k != "model"}), "model": weights}
            writer.submit(functools.partial(_write_epoch, weights, state, dict(meta), epoch,
                                            {**meta, "best_metric": progress["best"]} if improved else None,
                                            best_path, last_path, states_dir, int(cfg["keep_states"])))
        logger.epoch(record)
        if out_of_time:
            stopped_by = "max_time_s"
            break
        if patience is not None and progress["stale"] >= int(patience):
            stopped_by = f"early stopping ({patience} validations without improvement)"
            break
    writer.wait()
    logger.close()
    if rank == 0 and not best_path.exists():  # nothing trained in this call (already finished)
        save_checkpoint(best_path, model, {**checkpoint_meta, "epoch": epoch, "iteration": progress["iteration"]})
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return FitResult(best_metric=progress["best"], best_epoch=progress["best_epoch"], epochs_run=progress["epoch"],
                     iterations=progress["iteration"], seconds=time.monotonic() - start, stopped_by=stopped_by,
                     best_checkpoint=best_path, last_checkpoint=last_path, resumed_from=resumed_from)


def _write_epoch(weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any], epoch: int,
                 best_meta: dict[str, Any] | None, best_path: Path, last_path: Path, states_dir: Path,
                 keep: int) -> None:
    """One epoch's files: best.pt (when it improved), last.pt, the training state."""
    if best_meta is not None:
        save_checkpoint(best_path, weights, best_meta)
    save_checkpoint(last_path, weights, meta)
    save_state(states_dir, epoch, state, keep)


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler,
           progress: dict[str, Any]) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "progress": dict(progress)}


def _resume(cfg: Mapping[str, Any], out_dir: Path, states_dir: Path, model: torch.nn.Module,
            opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler, progress: dict[str, Any],
            rank: int) -> str | None:
    """Load the newest intact training state when ``train.resume`` asks for it."""
    mode = str(cfg.get("resume") or "never")
    if mode == "never":
        return None
    folder = states_dir if mode == "auto" else Path(mode) / "states" if (Path(mode) / "states").is_dir() else Path(mode)
    if mode != "auto" and not folder.is_dir():
        raise ConfigError(f"train.resume={mode}: not a train output folder or states folder")
    found = latest_state(folder)
    if found is None:
        if mode != "auto":
            raise DataError(folder, "no intact training state to resume from")
        return None
    state, path = found
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"train.resume={mode}: {path} was written for another model or optimiser "
                          f"configuration ({type(e).__name__}); use train.resume=never or another "
                          f"hydra.run.dir") from e
    set_rng_state(state["rng"])
    progress.update(state["progress"])
    _truncate_metrics(out_dir / "metrics.jsonl", int(progress["epoch"]))
    if rank == 0:
        log.info("resumed from %s: epoch %d, iteration %d, best %.4f", path, progress["epoch"],
                 progress["iteration"], progress["best"])
    return str(path)


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop log lines of epochs after the resumed state (a crash may have logged them)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("epoch", 0) < epochs_done]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
