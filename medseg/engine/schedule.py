"""Optimisers and learning-rate schedules, from :class:`medseg.config.TrainConfig`.

AdamW with warm-up and cosine decay, or SGD with Nesterov momentum and polynomial decay
(nnU-Net's choice); the schedule is stepped once per iteration.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medseg.config import TrainConfig, choice


def lr_factor(it: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total`` (after linear warm-up).

    >>> lr_factor(0, 100, 10, "cosine"), lr_factor(10, 100, 10, "cosine"), lr_factor(50, 100, 0, "constant")
    (0.1, 1.0, 1.0)
    """
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    progress = min(1.0, (it - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (nnU-Net's choice), from ``train``."""
    # fused kernels (one pass over each parameter, CPU and CUDA): same update, fewer passes
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                   for p in model.parameters()) else {}
    if choice(cfg.optimizer) == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-iteration schedule of ``cfg.max_epochs * cfg.iters_per_epoch`` iterations."""
    total, warmup, schedule = cfg.max_epochs * cfg.iters_per_epoch, cfg.warmup_iters, choice(cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warmup, schedule))
