"""Budget-aware schedules (``train.max_time_s`` with ``train.budget_schedule``): with a fake clock,
the learning rate reaches its floor exactly at the budget on a fast and on a slow "machine",
validations fall at evenly spaced fractions of the budget, a run killed mid-budget resumes the same
schedule (same weights as the uninterrupted run), and a larger budget extends a finished run."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from medseg.config import Schedule, TrainConfig
from medseg.data.labels import LabelSpec
from medseg.engine.schedule import BudgetSchedule, build_scheduler, lr_factor
from medseg.engine.trainer import fit
from medseg.inference.targets import Target
from medseg.models.checkpoint import load_checkpoint
from test_training import MODEL_CFG, TRAIN_CFG, _separable_case

#: 6 epochs of 8 iterations, warm-up 4, cosine; a validation every 16 planned iterations
BUDGET_CFG = replace(TRAIN_CFG, schedule=Schedule.cosine, warmup_iters=4, val_every=2, max_time_s=45.0,
                     budget_schedule=True)


class Ticks:
    """A fake monotonic clock: each reading is ``dt`` seconds after the previous one (the schedule
    reads it once per iteration and twice per epoch end, so ``dt`` sets the machine's speed).
    ``crash_after`` readings, it raises (a killed process)."""

    def __init__(self, dt: float, start: float = 0.0, crash_after: int | None = None) -> None:
        self.dt, self.now, self.calls, self.crash_after = dt, start, 0, crash_after

    def __call__(self) -> float:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise KeyboardInterrupt("killed")
        self.now += self.dt
        return self.now


def _simulate(cfg: TrainConfig, dt: float) -> tuple[BudgetSchedule, list[float], int]:
    """Drive a schedule like the trainer does: steps, then the epoch-end calls; returns the schedule,
    the learning rate of every step and the number of validations."""
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = build_scheduler(opt, cfg, clock=Ticks(dt))
    assert isinstance(sched, BudgetSchedule)
    sched.start()
    lrs, validations = [], 0
    for _ in range(cfg.max_epochs):
        if sched.finished:
            break
        for _ in range(cfg.iters_per_epoch):
            lrs.append(sched.get_last_lr()[0])
            sched.step()
            if sched.finished:
                break
        validations += sched.validation_due()
        sched.end_epoch()
    return sched, lrs, validations


@pytest.mark.parametrize("dt,stopped_by,validations_held", [
    (0.01, "max_epochs", 3), (1.0, "max_time_s", 3),
    (3.0, "max_time_s", 2),  # an epoch takes 2/3 of the budget: validations at epoch ends only
])
def test_lr_reaches_its_floor_exactly_at_the_budget(dt, stopped_by, validations_held):
    sched, lrs, validations = _simulate(BUDGET_CFG, dt)
    assert sched.finished and sched.stop_reason == stopped_by
    assert sched.get_last_lr() == [0.0]  # the floor, after the last step
    assert min(lrs) > 0.0  # every step trained with a positive rate
    seconds = sched.elapsed() - dt  # the reading at the last step (elapsed() reads the clock once more)
    if stopped_by == "max_time_s":  # a slow machine: the budget, to within one step
        assert BUDGET_CFG.max_time_s <= seconds < BUDGET_CFG.max_time_s + 3 * dt
        assert sched.iteration < sched.nominal
    else:  # a fast machine: the iteration cap, long before the budget
        assert sched.iteration == sched.nominal == 48 and seconds < 1.0
    peak = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # decays monotonically after warm-up
    assert lrs[0] < max(lrs)  # a warm-up
    assert validations == validations_held  # evenly spaced over the budget, whatever the speed


def test_fast_machine_matches_the_iteration_schedule():
    """Far under budget the budget schedule is the ordinary one, step for step."""
    _, lrs, _ = _simulate(BUDGET_CFG, 1e-4)
    assert lrs == pytest.approx([lr_factor(i, 48, 4, "cosine") for i in range(48)], abs=1e-12)


@pytest.mark.parametrize("dt", [1e-4, 1.0])
def test_decay_fraction_holds_the_peak_then_anneals_at_the_end(dt):
    """``train.decay_fraction=0.25`` (warmup-stable-decay): after warm-up the rate stays at its peak
    until 75 % of the run (iterations on a fast machine, the budget on a slow one), then decays to
    the floor at the end; far under budget it is the iteration schedule with the same fraction."""
    cfg = replace(BUDGET_CFG, decay_fraction=0.25)
    sched, lrs, _ = _simulate(cfg, dt)
    assert sched.finished and sched.get_last_lr() == [0.0]
    n = len(lrs)
    assert lrs[cfg.warmup_iters:int(0.7 * n)] == pytest.approx([1.0] * (int(0.7 * n) - cfg.warmup_iters))
    tail = lrs[int(0.8 * n):]
    assert 0.0 < tail[-1] < tail[0] < 1.0 and all(a >= b for a, b in zip(tail, tail[1:]))
    if dt < 0.01:
        assert lrs == pytest.approx([lr_factor(i, 48, 4, "cosine", 0.25) for i in range(48)], abs=1e-12)
        opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        plain = build_scheduler(opt, replace(cfg, max_time_s=None))
        iteration_lrs = []
        for _ in range(48):
            iteration_lrs.append(plain.get_last_lr()[0])
            opt.step()
            plain.step()
        assert iteration_lrs == pytest.approx(lrs, abs=1e-12)


@pytest.mark.parametrize("dt", [1e-4, 1.0])
def test_min_lr_ratio_ends_the_decay_at_that_share_of_the_peak(dt):
    """``train.min_lr_ratio=0.1``: the same shape, ``0.1 + 0.9 * factor`` after warm-up, ending at
    lr / 10 at the budget (fast and slow machine) and at the last iteration without a budget."""
    cfg = replace(BUDGET_CFG, min_lr_ratio=0.1)
    sched, lrs, _ = _simulate(cfg, dt)
    _, plain_lrs, _ = _simulate(BUDGET_CFG, dt)
    assert sched.finished and sched.get_last_lr() == pytest.approx([0.1])
    assert sched.summary()["final_lr"] == pytest.approx(0.1)
    w = cfg.warmup_iters
    assert lrs[:w] == pytest.approx(plain_lrs[:w], abs=1e-12)  # the warm-up ramp is unchanged
    assert lrs[w:] == pytest.approx([0.1 + 0.9 * x for x in plain_lrs[w:len(lrs)]], abs=1e-12)
    assert min(lrs[w:]) >= 0.1 - 1e-12
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    plain = build_scheduler(opt, replace(cfg, max_time_s=None))
    for _ in range(48):
        opt.step()
        plain.step()
    assert plain.get_last_lr() == pytest.approx([lr_factor(48, 48, 4, "cosine", floor=0.1)]) and \
        lr_factor(48, 48, 4, "cosine", floor=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_min_lr_ratio_outside_its_range_is_refused(bad):
    with pytest.raises(ValueError, match=r"train.min_lr_ratio=.* must be in \[0, 1\)"):
        replace(BUDGET_CFG, min_lr_ratio=bad)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_decay_fraction_outside_its_range_is_refused(bad):
    with pytest.raises(ValueError, match="decay_fraction"):
        replace(BUDGET_CFG, decay_fraction=bad)


def test_planned_iterations_and_eta_from_the_measured_step_time():
    sched, _, _ = _simulate(replace(BUDGET_CFG, max_epochs=100), 1.0)  # 1 s/step + 2 clock reads per epoch
    assert sched.seconds_per_iteration == pytest.approx(1.25, rel=0.05)
    assert abs(sched.planned - sched.iteration) <= 1 and sched.planned == pytest.approx(45 / 1.25, abs=2)
    summary = sched.summary()
    assert summary["planned_iterations"] == sched.planned and summary["final_lr"] == 0.0


def test_a_larger_budget_extends_a_finished_run():
    sched, _, _ = _simulate(BUDGET_CFG, 1.0)
    state = sched.state_dict()
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    longer = BudgetSchedule(opt, replace(BUDGET_CFG, max_time_s=90.0), clock=Ticks(1.0))
    longer.load_state_dict(state)
    assert not longer.finished  # progress: the larger of iterations / planned and seconds used / new budget
    assert longer.progress == pytest.approx(max(state["used_s"] / 90.0, state["iteration"] / longer.planned))
    assert 0.0 < longer.get_last_lr()[0] < 1.0
    same = BudgetSchedule(opt, BUDGET_CFG, clock=Ticks(1.0))
    same.load_state_dict(state)
    assert same.finished
    with pytest.raises(KeyError, match="not a budget schedule"):
        same.load_state_dict({"last_epoch": 3})


def _lrs(folder: Path) -> list[float]:
    return [json.loads(x)["lr"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("dt", [0.001, 0.5])
def test_fit_ends_annealed_at_the_budget(tmp_path, dt):
    cases = [_separable_case(s) for s in range(3)]
    cfg = replace(BUDGET_CFG, max_time_s=20.0)
    result = fit(cfg, MODEL_CFG, cases[:2], cases[2:], Target("labels", LabelSpec()), 3, tmp_path, clock=Ticks(dt))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["lr"] == 0.0 and "val_dice" in records[-1]
    assert result.budget["final_lr"] == 0.0 and result.budget["planned_iterations"] >= result.iterations - 1
    if dt > 0.01:
        assert result.stopped_by == "max_time_s" and result.iterations < 48
        assert 20.0 <= records[-1]["budget_used_s"] < 20.0 + 4 * dt
    else:
        assert result.stopped_by == "max_epochs" and result.iterations == 48
    # one validation per val_every (2) epochs' worth of the planned iterations, the last at the end
    assert sum("val_dice" in r for r in records) == result.budget["validations_planned"] == (3 if dt < 0.01 else 2)


def test_resume_mid_budget_continues_the_schedule(tmp_path):
    cases = [_separable_case(s) for s in range(3)]
    target = Target("labels", LabelSpec())
    cfg = replace(BUDGET_CFG, max_time_s=24.0, resume="auto")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    whole = fit(cfg, MODEL_CFG, cases[:2], cases[2:], target, 3, tmp_path / "a", clock=Ticks(0.5))
    with pytest.raises(KeyboardInterrupt):  # killed in its third epoch
        fit(cfg, MODEL_CFG, cases[:2], cases[2:], target, 3, tmp_path / "b", clock=Ticks(0.5, crash_after=25))
    for thread in threading.enumerate():  # let the last epoch's background write finish
        if thread.name == "medseg-checkpoint-writer":
            thread.join()
    assert len(_lrs(tmp_path / "b")) == 2
    resumed = fit(cfg, MODEL_CFG, cases[:2], cases[2:], target, 3, tmp_path / "b", clock=Ticks(0.5, start=1e4))
    assert resumed.resumed_from is not None
    assert resumed.iterations == whole.iterations and resumed.stopped_by == whole.stopped_by == "max_time_s"
    assert _lrs(tmp_path / "b") == _lrs(tmp_path / "a")  # the same schedule, not a restarted warm-up
    wa, wb = load_checkpoint(tmp_path / "a" / "last.pt")[0], load_checkpoint(tmp_path / "b" / "last.pt")[0]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.budget["used_s"] == pytest.approx(whole.budget["used_s"])
