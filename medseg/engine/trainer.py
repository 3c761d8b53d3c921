"""The training loop.

One function, :func:`fit`, driven entirely by config (no subclassing): patches from the
preprocessed cache, label-wise softmax or region-wise sigmoid targets, Dice + CE or Dice + focal
loss, AdamW with warm-up and cosine decay or SGD with Nesterov momentum and polynomial decay,
gradient clipping, mixed precision, optional ``torch.compile``, sliding-window validation Dice per
region every ``val_every`` epochs with early stopping, and the full training state saved
atomically every epoch so that ``train.resume=auto`` continues after a crash or ``kill -9``.
DistributedDataParallel is used when started by ``torchrun`` (gloo on CPU, NCCL on GPUs).

The loop is built from named steps: :func:`~medseg.engine.setup.set_up` (device, model, data,
optimiser, schedule, scaler, resume), :func:`train_epoch` (the iterations), :func:`end_epoch`
(validation, best-so-far bookkeeping and the epoch's files, written in the background while the
next epoch trains).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import ModelConfig, TrainConfig
from medseg.data.dataset import CachedCase
from medseg.engine.distributed import all_mean, barrier, broadcast
from medseg.engine.logging import TrainingLog
from medseg.engine.setup import TrainSession, set_up
from medseg.engine.state import BackgroundWriter, TrainState, rng_state, save_state, snapshot
from medseg.engine.validation import validate
from medseg.inference.precision import autocast
from medseg.inference.targets import Target
from medseg.models.checkpoint import CheckpointMeta, save_checkpoint
from medseg.models.unet import model_to_dict

log = logging.getLogger(__name__)

__all__ = ["FitResult", "FitRun", "fit", "train_epoch", "end_epoch"]


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


@dataclass
class FitRun:
    """What the epochs of one :func:`fit` call share besides the session: the validation cases,
    the target, the checkpoint metadata, the output folder, the logger and the background writer."""

    val_cases: Sequence[CachedCase]
    target: Target
    meta: CheckpointMeta
    out_dir: Path
    logger: TrainingLog
    writer: BackgroundWriter
    start: float

    @property
    def best_path(self) -> Path:
        """The best checkpoint so far."""
        return self.out_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        """The checkpoint of the last epoch."""
        return self.out_dir / "last.pt"


def fit(cfg: TrainConfig, model_cfg: ModelConfig, train_cases: Sequence[CachedCase],
        val_cases: Sequence[CachedCase], target: Target, in_channels: int, out_dir: Path,
        plan: Mapping[str, Any] | None = None) -> FitResult:
    """Train a ReLU U-Net (see the module docstring).

    Args:
        cfg: the ``train`` config (``cfg.patch_size`` must be set).
        model_cfg: the ``model`` config.
        train_cases: cached training cases.
        val_cases: cached validation cases (may be empty: then the lowest loss picks the best).
        target: label-wise or region-wise output.
        in_channels: number of image channels.
        out_dir: where checkpoints, states and logs go.
        plan: the prepare plan, recorded in every checkpoint.

    Returns:
        A :class:`FitResult`.
    """
    session, state, resumed_from = set_up(cfg, model_cfg, train_cases, target, in_channels, out_dir)
    meta = CheckpointMeta(plan=dict(plan or {}), model=model_to_dict(model_cfg), patch_size=session.patch,
                          target=target.to_json(), in_channels=in_channels, num_classes=target.channels,
                          fold=cfg.fold, validation_cases=[c.name for c in val_cases])
    logger = TrainingLog(out_dir, cfg, session.total_iterations, state.epoch, state.iteration,
                         enabled=session.rank == 0)
    run = FitRun(val_cases, target, meta, out_dir, logger, BackgroundWriter(), time.monotonic())
    stopped_by, epoch = "max_epochs", state.epoch
    for epoch in range(state.epoch, cfg.max_epochs):
        record = train_epoch(session, state, epoch, logger)
        stop = end_epoch(session, state, run, record)
        if stop is not None:
            stopped_by = stop
            break
    run.writer.wait()
    logger.close()
    if session.rank == 0 and not run.best_path.exists():  # nothing trained in this call (already finished)
        save_checkpoint(run.best_path, session.model, dataclasses.replace(meta, epoch=epoch, iteration=state.iteration))
    barrier(session.world)
    return FitResult(best_metric=state.best, best_epoch=state.best_epoch, epochs_run=state.epoch,
                     iterations=state.iteration, seconds=time.monotonic() - run.start, stopped_by=stopped_by,
                     best_checkpoint=run.best_path, last_checkpoint=run.last_path, resumed_from=resumed_from)


def train_epoch(s: TrainSession, state: TrainState, epoch: int, logger: TrainingLog) -> dict[str, Any]:
    """Run one epoch of iterations; returns its record (loss averaged over processes, lr, timing)."""
    s.dataset.set_epoch(epoch)
    if s.sampler is not None:
        s.sampler.set_epoch(epoch)
    s.model.train()
    losses: list[float] = []
    wait, t_epoch = 0.0, time.monotonic()
    t_data = time.monotonic()
    for x, y in s.batches:
        wait += time.monotonic() - t_data
        losses.append(_step(s, x, y))
        state.iteration += 1
        logger.step(epoch, losses, state.best)
        t_data = time.monotonic()
    train_s = time.monotonic() - t_epoch
    return {"epoch": epoch, "iteration": state.iteration, "loss": all_mean(float(np.mean(losses)), s.world, s.device),
            "lr": float(s.opt.param_groups[0]["lr"]), "data_wait_fraction": wait / max(train_s, 1e-9),
            "train_s": train_s}


def _step(s: TrainSession, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimiser step on a batch; returns its loss."""
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
    s.opt.zero_grad(set_to_none=True)
    with autocast(s.device, s.dtype):
        loss = s.loss_fn(s.step_model(x), y)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.opt)
    torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    s.sched.step()
    return float(loss.detach())


def end_epoch(s: TrainSession, state: TrainState, run: FitRun, record: dict[str, Any]) -> str | None:
    """Validate when due, update the best score, write the epoch's files and log the epoch.

    Returns:
        Why training stops after this epoch, or ``None`` to go on.
    """
    cfg, epoch = s.cfg, record["epoch"]
    record["elapsed_s"] = time.monotonic() - run.start
    out_of_time = cfg.max_time_s is not None and record["elapsed_s"] >= cfg.max_time_s
    if run.val_cases and ((epoch + 1) % cfg.val_every == 0 or epoch == cfg.max_epochs - 1 or out_of_time):
        record.update(_validation(s, run))
    score = record.get("val_mean_dice", -record["loss"] if not run.val_cases else None)
    improved = state.observe(score, validated="val_dice" in record, epoch=epoch)
    state.epoch = epoch + 1
    if s.rank == 0:
        _save_epoch(s, state, run, dataclasses.replace(run.meta, epoch=epoch, iteration=state.iteration,
                                                       val=record.get("val_dice")), improved)
    run.logger.epoch(record)
    if out_of_time:
        return "max_time_s"
    if cfg.patience is not None and state.stale >= cfg.patience:
        return f"early stopping ({cfg.patience} validations without improvement)"
    return None


def _validation(s: TrainSession, run: FitRun) -> dict[str, Any]:
    """Validation Dice per region (computed on rank 0, shared with every process) and its mean."""
    val = validate(s.model, run.val_cases, run.target, s.patch, s.cfg.val_overlap, s.device, s.dtype) \
        if s.rank == 0 else None
    val = broadcast(val, s.world)
    return {"val_dice": val, "val_mean_dice": float(np.mean(list(val.values())))}


def _save_epoch(s: TrainSession, state: TrainState, run: FitRun, meta: CheckpointMeta, improved: bool) -> None:
    """Snapshot weights and training state now; write them in the background while the next epoch trains."""
    weights = snapshot(s.model.state_dict())
    saved = {**snapshot({"optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(),
                         "scaler": s.scaler.state_dict(), "rng": rng_state(), "progress": state.to_dict()}),
             "model": weights}
    best_meta = dataclasses.replace(meta, best_metric=state.best) if improved else None
    run.writer.submit(functools.partial(_write_epoch, weights, saved, meta, best_meta, run, s.cfg.keep_states))


def _write_epoch(weights: dict[str, torch.Tensor], saved: dict[str, Any], meta: CheckpointMeta,
                 best_meta: CheckpointMeta | None, run: FitRun, keep: int) -> None:
    """One epoch's files: best.pt (when it improved), last.pt, the training state."""
    if best_meta is not None:
        save_checkpoint(run.best_path, weights, best_meta)
    save_checkpoint(run.last_path, weights, meta)
    save_state(run.out_dir / "states", int(meta.epoch or 0), saved, keep)

