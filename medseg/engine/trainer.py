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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import ModelConfig, TrainConfig
from medseg.data.augment import accepted_subsets
from medseg.data.dataset import CachedCase
from medseg.engine.distributed import all_mean, barrier, broadcast
from medseg.engine.logging import TrainingLog, format_eta
from medseg.engine.schedule import BudgetSchedule
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
    budget: dict[str, Any] | None = None  # a budget schedule's figures (planned iterations, s/iteration, ...)
    peak_memory_gb: float | None = None  # torch.cuda.max_memory_allocated on a GPU (None on CPU)
    best_metric_ema: float | None = None  # the moving average (train.best_ema) at best_epoch: what chose it


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
    first_epoch: int = 0  # the first epoch of this call (> 0 after a resume)
    spacing: Sequence[float] | None = None  # the preprocessed grid's spacing (the plan's target spacing)
    min_component_ml: float = 0.0  # validation removes smaller tumour components, as the exported model does

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
        plan: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.monotonic,
        min_component_ml: float = 0.0) -> FitResult:
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
        clock: seconds (monotonic) a time budget is measured with (a fake one in tests).
        min_component_ml: validation removes tumour components smaller than this (ml, on the plan's
            target spacing), like the exported model's post-processing; 0 keeps them all.

    Returns:
        A :class:`FitResult`.
    """
    session, state, resumed_from = set_up(cfg, model_cfg, train_cases, target, in_channels, out_dir, clock)
    meta = CheckpointMeta(plan=dict(plan or {}), model=model_to_dict(model_cfg), patch_size=session.patch,
                          target=target.to_json(), in_channels=in_channels, num_classes=target.channels,
                          fold=cfg.fold, validation_cases=[c.name for c in val_cases],
                          accepted_subsets=accepted_subsets(plan_channels(plan, in_channels), cfg.augment))
    budget = session.budget
    logger = TrainingLog(out_dir, cfg, budget.planned if budget else session.total_iterations, state.epoch,
                         state.iteration, enabled=session.rank == 0)
    run = FitRun(val_cases, target, meta, out_dir, logger, BackgroundWriter(), time.monotonic(), state.epoch,
                 (plan or {}).get("target_spacing"), min_component_ml)
    if budget is not None:
        budget.start()
    stopped_by, epoch = "max_epochs", state.epoch
    for epoch in range(state.epoch, cfg.max_epochs):
        if budget is not None and budget.finished:  # an extended or rerun run whose budget is spent
            stopped_by = budget.stop_reason
            break
        record = train_epoch(session, state, epoch, logger)
        stop = end_epoch(session, state, run, record)
        if stop is not None:
            stopped_by = stop
            break
    return _finish(session, state, run, epoch, stopped_by, resumed_from)


def _finish(s: TrainSession, state: TrainState, run: FitRun, epoch: int, stopped_by: str,
            resumed_from: str | None) -> FitResult:
    """Wait for the last files, close the logs, make sure ``best.pt`` exists; the result."""
    run.writer.wait()
    run.logger.close()
    if s.rank == 0 and not run.best_path.exists():  # nothing trained in this call (already finished)
        save_checkpoint(run.best_path, s.model, dataclasses.replace(run.meta, epoch=epoch, iteration=state.iteration))
    barrier(s.world)
    peak = torch.cuda.max_memory_allocated(s.device) / 2**30 if s.device.type == "cuda" else None
    return FitResult(best_metric=state.best, best_epoch=state.best_epoch, epochs_run=state.epoch,
                     iterations=state.iteration, seconds=time.monotonic() - run.start, stopped_by=stopped_by,
                     best_checkpoint=run.best_path, last_checkpoint=run.last_path, resumed_from=resumed_from,
                     budget=s.budget.summary() if s.budget is not None else None, peak_memory_gb=peak,
                     best_metric_ema=state.best_ema if math.isfinite(state.best_ema) else None)


def plan_channels(plan: Mapping[str, Any] | None, in_channels: int) -> list[str]:
    """The channel names of the prepared data (``plan.json``), else ``channel0``, ``channel1``, ..."""
    names = ((plan or {}).get("preprocessing") or {}).get("channels")
    return [str(c) for c in names] if names else [f"channel{i}" for i in range(in_channels)]


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
        if s.budget is not None and s.budget.finished:  # annealed at the budget: stop mid-epoch
            break
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
    validate_now, out_of_time = _cadence(s, run, epoch)
    if validate_now:
        record.update(_validation(s, run))
    if s.budget is not None:
        record.update(_replan(s.budget, run, epoch, s.rank))
    else:
        record["elapsed_s"] = time.monotonic() - run.start
    score = record.get("val_mean_dice", -record["loss"] if not run.val_cases else None)
    improved = state.observe(score, validated="val_dice" in record, epoch=epoch, smoothing=cfg.best_ema)
    if "val_dice" in record:
        record["val_mean_dice_ema"] = state.ema  # what chooses best.pt
    state.epoch = epoch + 1
    if s.rank == 0:
        _save_epoch(s, state, run, dataclasses.replace(run.meta, epoch=epoch, iteration=state.iteration,
                                                       val=record.get("val_dice")), improved)
    run.logger.epoch(record)
    if out_of_time:
        return s.budget.stop_reason if s.budget is not None else "max_time_s"
    if cfg.patience is not None and state.stale >= cfg.patience:
        return f"early stopping ({cfg.patience} validations without improvement)"
    return None


def _cadence(s: TrainSession, run: FitRun, epoch: int) -> tuple[bool, bool]:
    """``(validate now, stop after this epoch)``: with a budget schedule, validations at evenly spaced
    fractions of the budget and at its end; otherwise every ``val_every`` epochs, at the last epoch
    and at the epoch crossing ``max_time_s``."""
    cfg, budget = s.cfg, s.budget
    if budget is not None:
        return bool(run.val_cases) and budget.validation_due(), budget.finished
    out_of_time = cfg.max_time_s is not None and time.monotonic() - run.start >= cfg.max_time_s
    due = (epoch + 1) % cfg.val_every == 0 or epoch == cfg.max_epochs - 1 or out_of_time
    return bool(run.val_cases) and due, out_of_time


def _replan(budget: BudgetSchedule, run: FitRun, epoch: int, rank: int) -> dict[str, Any]:
    """A budget schedule's figures at an epoch end (seconds used, planned iterations, ETA); the
    plan is logged after the first epoch of a call and whenever it moves by more than 10 %."""
    before = budget.planned
    figures = budget.end_epoch()
    run.logger.replan(budget.planned)
    if rank == 0 and (epoch == run.first_epoch or abs(budget.planned - before) > 0.1 * before):
        log.info("budget %.0f s: %s s/iteration measured; planned %d of at most %d iterations; ETA %s",
                 budget.budget, f"{budget.seconds_per_iteration:.3g}" if budget.seconds_per_iteration else "?",
                 budget.planned, budget.nominal, format_eta(figures["eta_s"]))
    return {"elapsed_s": figures["budget_used_s"], **figures}


def _validation(s: TrainSession, run: FitRun) -> dict[str, Any]:
    """Validation Dice per region (computed on rank 0, shared with every process) and its mean."""
    val = validate(s.model, run.val_cases, run.target, s.patch, s.cfg.val_overlap, s.device, s.dtype,
                   run.spacing, run.min_component_ml) if s.rank == 0 else None
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

