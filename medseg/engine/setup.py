"""Everything :func:`medseg.engine.trainer.fit` builds before its first epoch.

:func:`set_up` seeds, picks the device (joining the process group under ``torchrun``), builds the
ReLU U-Net, the patch loader, the loss, the optimiser, the schedule and the grad scaler, restores a
training state when ``train.resume`` asks for one, and wraps the network for the training step
(DistributedDataParallel, ``torch.compile``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from medseg.config import ModelConfig, TrainConfig, choice
from medseg.data.dataset import CachedCase, PatchDataset
from medseg.data.planning import estimate_memory_gb
from medseg.engine.distributed import all_mean, distributed_env, distributed_sampler, init_distributed, wrap_ddp
from medseg.engine.losses import SegmentationLoss
from medseg.engine.prefetch import ThreadPrefetcher
from medseg.engine.schedule import BudgetSchedule, build_optimizer, build_scheduler
from medseg.engine.state import TrainState, latest_state, set_rng_state
from medseg.errors import ConfigError, DataError
from medseg.inference.precision import autocast_dtype
from medseg.inference.predictor import pick_device
from medseg.inference.targets import Target
from medseg.models.unet import build_model, check_relu_only, describe_model, model_to_dict, volume_patch
from medseg.utils.files import atomic_path

log = logging.getLogger(__name__)


@dataclass
class TrainSession:
    """The objects one training run works with.

    Attributes:
        cfg: the ``train`` config.
        device: where the network trains.
        rank: this process's rank (0 without ``torchrun``).
        world: number of processes.
        model: the network (weights, state dicts and validation use it).
        step_model: what the training step calls (``model`` wrapped for DDP and/or compiled).
        patch: the 3D training patch.
        dataset: the patch dataset (its epoch is set every epoch).
        sampler: the distributed sampler, or ``None``.
        batches: the iterable of ``(image, label)`` batches.
        loss_fn: Dice plus CE or focal.
        opt: the optimiser.
        sched: the per-iteration learning-rate schedule (a :class:`BudgetSchedule` with a time budget).
        scaler: the grad scaler (active for fp16 only).
        dtype: the autocast dtype (``None``: fp32).
    """

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    model: nn.Module
    step_model: nn.Module
    patch: list[int]
    dataset: PatchDataset
    sampler: Sampler | None
    batches: Iterable[Any]
    loss_fn: SegmentationLoss
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR | BudgetSchedule
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None

    @property
    def total_iterations(self) -> int:
        """Planned iterations of the whole run."""
        return self.cfg.max_epochs * self.cfg.iters_per_epoch

    @property
    def budget(self) -> BudgetSchedule | None:
        """The budget schedule (``train.max_time_s`` with ``train.budget_schedule``), else ``None``."""
        return self.sched if isinstance(self.sched, BudgetSchedule) else None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def set_up(cfg: TrainConfig, model_cfg: ModelConfig, train_cases: Sequence[CachedCase], target: Target,
           in_channels: int, out_dir: Path, clock: Callable[[], float] = time.monotonic,
           ) -> tuple[TrainSession, TrainState, str | None]:
    """Build a training session and restore the training state ``cfg.resume`` asks for.

    ``clock`` (seconds, monotonic) is what a time budget is measured with (a fake one in tests).

    Returns:
        ``(session, state, resumed_from)``; ``resumed_from`` is the state file's path or ``None``.

    Raises:
        ConfigError: on an unusable config (patch size, model, precision, resume target).
        DataError: when ``train.resume=PATH`` holds no intact state.
    """
    if cfg.patch_size is None:
        raise ConfigError("train.patch_size is not set (the train stage takes it from plan.json)")
    rank, world = distributed_env()
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = init_distributed(pick_device(choice(cfg.device)), world)
    model = build_model(model_cfg, in_channels, target.channels).to(device)
    check_relu_only(model)
    patch = volume_patch(model_cfg, cfg.patch_size)
    if rank == 0:
        memory = estimate_memory_gb(patch, model_to_dict(model_cfg), in_channels, target.channels, cfg.batch_size)
        log.info("%s; device %s, %d threads, %d process(es)",
                 describe_model(model, model_cfg, patch, cfg.batch_size, memory), device, torch.get_num_threads(),
                 world)
    dataset, sampler, batches = _batches(cfg, train_cases, patch, device, rank, world)
    loss_fn = SegmentationLoss(target, choice(cfg.loss), cfg.dice_weight, cfg.ce_weight, cfg.focal_gamma)
    opt = build_optimizer(model, cfg)
    dtype = autocast_dtype(choice(cfg.precision), device)
    session = TrainSession(cfg=cfg, device=device, rank=rank, world=world, model=model, step_model=model,
                           patch=patch, dataset=dataset, sampler=sampler, batches=batches, loss_fn=loss_fn, opt=opt,
                           sched=build_scheduler(opt, cfg, clock, _sync(world, device)), dtype=dtype,
                           scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16))
    state, resumed_from = resume(session, out_dir)
    step_model = wrap_ddp(model, device, world)
    step_model = torch.compile(step_model) if cfg.compile else step_model
    return dataclasses.replace(session, step_model=step_model), state, resumed_from


def _sync(world: int, device: torch.device) -> Callable[[float], float] | None:
    """The mean over processes of a DDP run (so all agree on the budget used), ``None`` for one."""
    return functools.partial(all_mean, world=world, device=device) if world > 1 else None


def _batches(cfg: TrainConfig, cases: Sequence[CachedCase], patch: list[int], device: torch.device, rank: int,
             world: int) -> tuple[PatchDataset, Sampler | None, Iterable[Any]]:
    """The patch dataset, its distributed sampler and the batches to iterate each epoch."""
    augment = dataclasses.asdict(cfg.augment) if dataclasses.is_dataclass(cfg.augment) else dict(cfg.augment)
    dataset = PatchDataset(cases, patch, cfg.iters_per_epoch * cfg.batch_size * world, cfg.fg_oversample,
                           augment, cfg.seed)
    sampler = distributed_sampler(dataset, rank, world)
    workers = cfg.num_workers
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    # on CPU, a helper thread competes with the network for the same cores: measured slower than
    # preparing each batch in turn (bench/train_vs_monai.py --set train.prefetch=2)
    prefetch = cfg.prefetch if cfg.prefetch is not None else (2 if device.type == "cuda" else 0)
    batches = ThreadPrefetcher(loader, prefetch) if workers == 0 and prefetch > 0 else loader
    return dataset, sampler, batches


def resume(session: TrainSession, out_dir: Path) -> tuple[TrainState, str | None]:
    """Load the newest intact training state when ``train.resume`` asks for it.

    ``auto``: the newest state in ``out_dir/states`` if any; ``never``: start afresh; a path: a train
    output folder or a states folder, which must hold an intact state.

    Returns:
        ``(state, path of the state file or None)``.
    """
    mode = str(session.cfg.resume or "never")
    if mode == "never":
        return TrainState(), None
    states_dir = out_dir / "states"
    folder = states_dir if mode == "auto" else Path(mode) / "states" if (Path(mode) / "states").is_dir() else Path(mode)
    if mode != "auto" and not folder.is_dir():
        raise ConfigError(f"train.resume={mode}: not a train output folder or states folder")
    found = latest_state(folder)
    if found is None:
        if mode != "auto":
            raise DataError(folder, "no intact training state to resume from")
        return TrainState(), None
    saved, path = found
    _load_state(session, saved, path, mode)
    state = TrainState.from_dict(saved["progress"])
    _truncate_metrics(out_dir / "metrics.jsonl", state.epoch)
    if session.rank == 0:
        log.info("resumed from %s: epoch %d, iteration %d, best %.4f", path, state.epoch, state.iteration, state.best)
    return state, str(path)


def _load_state(session: TrainSession, saved: dict[str, Any], path: Path, mode: str) -> None:
    """Restore weights, optimiser, schedule, grad scaler and RNGs from a saved training state."""
    try:
        session.model.load_state_dict(saved["model"])
        session.opt.load_state_dict(saved["optimizer"])
        session.sched.load_state_dict(saved["scheduler"])
        session.scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"train.resume={mode}: {path} was written for another model or optimiser "
                          f"configuration ({type(e).__name__}); use train.resume=never or another "
                          f"hydra.run.dir") from e
    set_rng_state(saved["rng"])


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop log lines of epochs after the resumed state (a crash may have logged them)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("epoch", 0) < epochs_done]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
