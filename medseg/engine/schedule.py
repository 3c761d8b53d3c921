"""Optimisers and learning-rate schedules, from :class:`medseg.config.TrainConfig`.

AdamW with warm-up and cosine decay, or SGD with Nesterov momentum and polynomial decay
(nnU-Net's choice); the schedule is stepped once per iteration. ``train.decay_fraction`` below 1
holds the peak rate after warm-up and decays only over that last share of the run (a
warmup-stable-decay schedule).

Two ways to measure how far a run is:

- by iterations (``train.max_time_s`` unset, or ``train.budget_schedule=false``): a ``LambdaLR``
  over ``max_epochs * iters_per_epoch`` iterations; a time budget then only cuts the run short;
- by the budget (``train.max_time_s`` set and ``train.budget_schedule=true``, the default):
  :class:`BudgetSchedule`. Progress is ``max(iterations done / planned, seconds used / budget)``.
  The decay starts at the same fraction of progress as ``warmup_iters`` is of ``max_epochs *
  iters_per_epoch`` (or at ``1 - decay_fraction``, if later) and reaches its floor
  (``train.min_lr_ratio`` of the peak; 0 by default) exactly when progress reaches 1; the linear warm-up
  ramp lasts ``warmup_iters`` scaled by planned / maximum iterations. Validations fall at evenly
  spaced fractions of the budget, one per ``val_every * iters_per_epoch`` planned iterations (so
  they cost the same share of the time as ``val_every`` does without a budget), and at its end.
  The planned iterations start at ``max_epochs * iters_per_epoch`` and are re-estimated at every
  epoch end from the measured seconds per iteration (the first epoch of a call is left out of the
  measurement once a second one exists: it carries start-up costs). Far under budget this is the
  iteration schedule, step for step. Its state (budget seconds used, iterations, seconds per
  iteration, progress at the last validation) is saved in every training state, so a resumed run
  continues the same schedule; a larger budget on an extended run continues from the fraction
  already used of the new budget. The learning rate depends on the clock, so unlike an iteration
  schedule two runs are not bit-identical (``train.deterministic`` still fixes everything else).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medseg.config import TrainConfig, choice
from medseg.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds, monotonic; :class:`BudgetSchedule` takes one so tests can run a fake clock.
Clock = Callable[[], float]


def decay(progress: float, schedule: str, floor: float = 0.0) -> float:
    """The decay multiplier at ``progress`` (0..1) of the decay phase: from 1 down to ``floor``
    (``train.min_lr_ratio``).

    >>> decay(0.0, "cosine"), decay(0.5, "cosine"), decay(1.0, "poly"), decay(0.7, "constant")
    (1.0, 0.5, 0.0, 1.0)
    >>> decay(1.0, "cosine", floor=0.1), decay(0.5, "cosine", floor=0.1)
    (0.1, 0.55)
    """
    progress = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "poly":
        shape = (1 - progress) ** 0.9
    else:
        return 1.0
    return floor + (1.0 - floor) * shape


def lr_factor(it: int, total: int, warmup: int, schedule: str, decay_fraction: float = 1.0,
              floor: float = 0.0) -> float:
    """Learning-rate multiplier at iteration ``it`` of ``total``: linear warm-up, the peak held,
    then the decay over the last ``decay_fraction`` of ``total`` (all of it after warm-up when 1)
    from 1 to ``floor`` (``train.min_lr_ratio``).

    >>> lr_factor(0, 100, 10, "cosine"), lr_factor(10, 100, 10, "cosine"), lr_factor(50, 100, 0, "constant")
    (0.1, 1.0, 1.0)
    >>> lr_factor(60, 100, 10, "cosine", 0.4), lr_factor(80, 100, 10, "cosine", 0.4)
    (1.0, 0.5)
    >>> lr_factor(100, 100, 0, "cosine", floor=0.1), lr_factor(50, 100, 0, "cosine", floor=0.1)
    (0.1, 0.55)
    """
    if warmup > 0 and it < warmup:
        return (it + 1) / warmup
    start = max(warmup, round(total * (1.0 - decay_fraction)))
    return decay((it - start) / max(1, total - start), schedule, floor)


def budget_factor(progress: float, warm: float, schedule: str, ramp: float = 1.0, decay_fraction: float = 1.0,
                  floor: float = 0.0) -> float:
    """Learning-rate multiplier at ``progress`` (0..1) of a budget: the warm-up ``ramp`` (0..1)
    times the decay, which starts at progress ``max(warm, 1 - decay_fraction)`` and reaches
    ``floor`` (``train.min_lr_ratio``; 0 by default) at progress 1.

    >>> [round(budget_factor(p, 0.1, "cosine"), 6) for p in (0.0, 0.1, 0.55, 1.0)], budget_factor(0.0, 0.1, "poly", 0.25)
    ([1.0, 1.0, 0.5, 0.0], 0.25)
    >>> [round(budget_factor(p, 0.1, "cosine", decay_fraction=0.4), 6) for p in (0.5, 0.6, 0.8, 1.0)]
    [1.0, 1.0, 0.5, 0.0]
    >>> budget_factor(1.0, 0.1, "cosine", floor=0.1), round(budget_factor(0.55, 0.1, "cosine", 0.5, floor=0.1), 6)
    (0.1, 0.275)
    """
    start = max(warm, 1.0 - decay_fraction)
    return ramp * decay((progress - start) / (1.0 - start) if start < 1.0 else 1.0, schedule, floor)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (nnU-Net's choice), from ``train``."""
    # fused kernels (one pass over each parameter, CPU and CUDA): same update, fewer passes
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                   for p in model.parameters()) else {}
    if choice(cfg.optimizer) == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, clock: Clock = time.monotonic,
                    sync: Callable[[float], float] | None = None) -> torch.optim.lr_scheduler.LambdaLR | BudgetSchedule:
    """The per-iteration schedule: a :class:`BudgetSchedule` when ``train.max_time_s`` is set and
    ``train.budget_schedule`` is on, else a ``LambdaLR`` of ``cfg.max_epochs * cfg.iters_per_epoch``
    iterations. ``clock`` and ``sync`` go to :class:`BudgetSchedule`."""
    if cfg.max_time_s is not None and cfg.budget_schedule:
        return BudgetSchedule(opt, cfg, clock, sync)
    total, warmup, schedule = cfg.max_epochs * cfg.iters_per_epoch, cfg.warmup_iters, choice(cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, total, warmup, schedule, cfg.decay_fraction, cfg.min_lr_ratio))


class BudgetSchedule:
    """Learning rate, validation cadence and stopping that follow the fraction of a time budget used
    (see the module docstring).

    Stepped once per iteration like a torch scheduler (:meth:`step`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`get_last_lr`); the trainer also calls :meth:`start` before the
    first epoch of a call, :meth:`validation_due` and :meth:`end_epoch` at each epoch end, and stops
    when :attr:`finished`.

    Args:
        opt: the optimiser (its learning rates are set at every step).
        cfg: the ``train`` config (``max_time_s``, ``max_epochs``, ``iters_per_epoch``,
            ``warmup_iters``, ``schedule``, ``val_every``).
        clock: seconds, monotonic (a fake one in tests).
        sync: makes every process agree on the seconds used (the mean over a DDP run's processes),
            so that all of them use the same learning rate and stop at the same iteration.

    Example:
        >>> ticks = iter(range(1000))
        >>> model = nn.Linear(1, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=1.0)
        >>> cfg = TrainConfig(max_time_s=10, max_epochs=100, iters_per_epoch=10, warmup_iters=0)
        >>> sched = BudgetSchedule(opt, cfg, clock=lambda: float(next(ticks)))
        >>> sched.start()
        >>> while not sched.finished:
        ...     sched.step()
        >>> sched.iteration, sched.get_last_lr()
        (10, [0.0])
    """

    def __init__(self, opt: torch.optim.Optimizer, cfg: TrainConfig, clock: Clock = time.monotonic,
                 sync: Callable[[float], float] | None = None) -> None:
        if cfg.max_time_s is None or not cfg.max_time_s > 0:
            raise ConfigError(f"train.max_time_s={cfg.max_time_s}: a budget schedule needs a positive budget")
        self.opt, self.clock, self.sync = opt, clock, sync or (lambda v: v)
        self.budget = float(cfg.max_time_s)
        self.nominal = max(1, cfg.max_epochs * cfg.iters_per_epoch)
        self.warmup_iters = max(0, cfg.warmup_iters)
        self.warm = min(1.0, self.warmup_iters / self.nominal)
        self.kind, self.decay_fraction, self.floor = choice(cfg.schedule), cfg.decay_fraction, cfg.min_lr_ratio
        self.val_span = max(1, cfg.val_every * cfg.iters_per_epoch)  # planned iterations between validations
        self.base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in opt.param_groups]
        self.iteration, self.planned, self.last_validated = 0, self.nominal, 0.0
        self.seconds_per_iteration: float | None = None
        self.used_s = 0.0  # budget seconds used before this call (a resumed run's earlier calls)
        self.saved_used_s = 0.0  # seconds used at the last epoch end (what a training state records)
        self.progress = 0.0
        self._t0, self._first_it, self._measure = clock(), 0, None
        self._apply()

    @property
    def finished(self) -> bool:
        """The budget (or the planned or maximum iterations) is used up."""
        return self.progress >= 1.0

    @property
    def stop_reason(self) -> str:
        """``max_epochs`` when the iteration cap ended the run, else ``max_time_s``."""
        return "max_epochs" if self.iteration >= self.nominal else "max_time_s"

    def start(self) -> None:
        """Start this call's clock (after set-up and resume: their seconds do not count)."""
        self._t0, self._first_it, self._measure = self.clock(), self.iteration, None

    def elapsed(self) -> float:
        """Budget seconds used so far, earlier calls of a resumed run included."""
        return float(self.sync(self.used_s + self.clock() - self._t0))

    def refresh(self, elapsed: float | None = None) -> None:
        """Recompute progress from the iterations and the clock (never backwards), and the rates."""
        seconds = self.elapsed() if elapsed is None else elapsed
        self.progress = min(1.0, max(self.progress, self.iteration / self.planned, seconds / self.budget))
        self._apply()

    def step(self) -> None:
        """After each optimiser step: count it and set the rates of the next one."""
        self.iteration += 1
        self.refresh()

    def get_last_lr(self) -> list[float]:
        """The learning rates the next step uses."""
        return [float(g["lr"]) for g in self.opt.param_groups]

    def _apply(self) -> None:
        ramp_iters = max(1, round(self.warmup_iters * self.planned / self.nominal)) if self.warmup_iters else 0
        ramp = min(1.0, (self.iteration + 1) / ramp_iters) if ramp_iters else 1.0
        factor = budget_factor(self.progress, self.warm, self.kind, ramp, self.decay_fraction, self.floor)
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * factor

    @property
    def validations_planned(self) -> int:
        """Validations the planned iterations hold (one per ``val_every`` epochs' iterations)."""
        return max(1, math.ceil(self.planned / self.val_span - 1e-9))

    def validation_due(self) -> bool:
        """At an epoch end: has progress moved on by a validation interval since the last one
        (``val_every * iters_per_epoch`` of the planned iterations), or reached the end? Records
        the validation when it is due."""
        self.refresh()
        interval = min(1.0, self.val_span / self.planned)
        if self.finished or self.progress >= self.last_validated + interval - 1e-9:
            self.last_validated = self.progress
            return True
        return False

    def end_epoch(self) -> dict[str, Any]:
        """At an epoch end (after validation): measure seconds per iteration, re-plan the
        iterations that fit the budget; returns the figures for the epoch record."""
        seconds = self.elapsed()
        if self.iteration > self._first_it:
            if self._measure is None:  # the first epoch of this call: start-up costs included
                self._measure = (seconds, self.iteration)
                self.seconds_per_iteration = (seconds - self.used_s) / (self.iteration - self._first_it)
            elif self.iteration > self._measure[1]:
                self.seconds_per_iteration = (seconds - self._measure[0]) / (self.iteration - self._measure[1])
        self.saved_used_s = seconds
        self._replan(seconds)
        self.refresh(seconds)
        return {"budget_used_s": seconds, "planned_iterations": self.planned, "eta_s": self.eta(seconds),
                "progress": self.progress}

    def _replan(self, seconds: float) -> None:
        if self.seconds_per_iteration and self.seconds_per_iteration > 0:
            fits = math.floor(max(0.0, self.budget - seconds) / self.seconds_per_iteration)
            self.planned = max(1, min(self.nominal, self.iteration + fits))

    def eta(self, seconds: float) -> float:
        """Seconds left: the planned iterations at the measured rate, at most the budget left."""
        left = max(0.0, self.budget - seconds)
        if self.seconds_per_iteration is None:
            return left
        return min(left, (self.planned - self.iteration) * self.seconds_per_iteration)

    def summary(self) -> dict[str, Any]:
        """The budget figures of a run (the train summary's ``budget``)."""
        return {"budget_s": self.budget, "used_s": round(self.saved_used_s, 3), "planned_iterations": self.planned,
                "max_iterations": self.nominal, "iterations": self.iteration,
                "seconds_per_iteration": self.seconds_per_iteration, "final_lr": self.get_last_lr()[0],
                "validations_planned": self.validations_planned}

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a training state (the seconds used are those at the last epoch end)."""
        return {"kind": "budget", "used_s": self.saved_used_s, "iteration": self.iteration,
                "seconds_per_iteration": self.seconds_per_iteration, "last_validated": self.last_validated,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the schedule of a saved state (under this config's budget and caps).

        Raises:
            KeyError: ``state`` is not a budget schedule's (a run started without a budget).
        """
        if state.get("kind") != "budget":
            raise KeyError("the saved schedule is not a budget schedule (train.budget_schedule changed)")
        self.used_s = self.saved_used_s = float(state["used_s"])
        self.iteration = int(state["iteration"])
        self.seconds_per_iteration = state["seconds_per_iteration"]
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._replan(self.used_s)
        self.progress = 0.0
        self.refresh(self.used_s)
        self.last_validated = min(float(state["last_validated"]), self.progress)
        self.start()
