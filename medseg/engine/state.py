"""Full training state on disk: written atomically every epoch, checked by sha256 on resume.

``states/state-<epoch>.pt`` holds the model, optimiser, scheduler (with a time budget: the budget
seconds used, iterations, measured seconds per iteration and last validation point of
:class:`~medseg.engine.schedule.BudgetSchedule`) and grad-scaler states, every RNG state (Python, numpy, torch, CUDA) and, under ``"progress"``, the :class:`TrainState` (epoch,
iteration, best metric, early-stopping counter, moving average of the validation Dice); ``states/state-<epoch>.json`` holds its sha256.
The newest ``keep`` states are kept. :func:`latest_state` returns the newest state whose checksum matches; a corrupt or truncated
state is reported with a warning and the one before it is used. Only tensors and plain data are
stored, so states load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.utils.files import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a training run stands; saved in every training state and restored on resume.

    Attributes:
        epoch: epochs completed (the next epoch to run).
        iteration: optimiser steps taken.
        best: the score of the chosen epoch (``best.pt``): validation mean Dice, or minus the loss
            without validation cases.
        best_epoch: epoch of ``best`` (-1 before the first score).
        stale: validations since the last improvement (early stopping).
        ema: exponential moving average of the scores so far (``None`` before the first).
        best_ema: ``ema`` at ``best_epoch``: what a later score's average must beat.

    The choice follows the moving average ``ema = smoothing * ema + (1 - smoothing) * score`` (the
    first score starts it), nnU-Net's rule for its best checkpoint: one lucky validation on a few
    cases does not pick the weights; ``smoothing=0`` picks the highest score itself.

    Example:
        >>> state = TrainState()
        >>> state.observe(0.5, validated=True), state.observe(0.4, validated=True)
        (True, False)
        >>> state.best, state.stale
        (0.5, 1)
        >>> smooth = TrainState()
        >>> [smooth.observe(s, True, epoch=e, smoothing=0.5) for e, s in enumerate([0.5, 0.9, 0.6, 0.8, 0.85, 0.85])]
        [True, True, False, True, True, True]
        >>> smooth.best, smooth.best_epoch  # not the lucky 0.9 of epoch 1
        (0.85, 5)
    """

    epoch: int = 0
    iteration: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    ema: float | None = None
    best_ema: float = -math.inf

    def observe(self, score: float | None, validated: bool, epoch: int | None = None,
                smoothing: float = 0.0) -> bool:
        """Record the ``score`` of ``epoch`` (default: :attr:`epoch`); ``True`` when its moving
        average (``smoothing``: the weight of the average so far; 0: the score itself) is a new best.

        A score that does not improve counts towards early stopping only when it came from a
        validation (``validated``).
        """
        if score is None:
            return False
        score = float(score)
        self.ema = score if self.ema is None else smoothing * self.ema + (1.0 - smoothing) * score
        if self.ema > self.best_ema:
            self.best, self.best_ema, self.stale = score, self.ema, 0
            self.best_epoch = self.epoch if epoch is None else epoch
            return True
        if validated:
            self.stale += 1
        return False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored under ``"progress"`` in a training state)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        """Read :meth:`to_dict`'s output (the ``progress`` dict of older states too: those chose by
        the score itself, so their best score is the average to beat and the average starts there)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "best_ema" not in values:
            best = float(values.get("best", -math.inf))
            values.update(best_ema=best, ema=best if math.isfinite(best) else None)
        return cls(**values)


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(folder: Path, epoch: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` for ``epoch`` atomically with its checksum; prune older states.

    The state is serialised in memory and hashed from those bytes (no second read of the file).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"state-{epoch:05d}.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    write_json(path.with_suffix(".json"), {"epoch": epoch, "sha256": hashlib.sha256(data).hexdigest()})
    for old in sorted(folder.glob("state-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def snapshot(obj: Any) -> Any:
    """A copy of a (nested) state dict whose tensors are detached clones, safe to write from another
    thread while training goes on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs checkpoint and state writes in one background thread, one job at a time.

    Training continues while the previous epoch's files are serialised and written (atomically:
    a crash mid-write leaves the previous files in place). :meth:`submit` first waits for the
    previous job; :meth:`wait` re-raises a write error in the training thread.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the background once the previous job has finished."""
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as e:  # re-raised by wait()  # noqa: BLE001
                self._error = e

        self._thread = threading.Thread(target=run, name="medseg-checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the running job; re-raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def latest_state(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest intact state in ``folder`` (checksum verified), or ``None`` when there is none."""
    for path in sorted(folder.glob("state-*.pt"), reverse=True):
        record = path.with_suffix(".json")
        problem = None
        if not record.is_file():
            problem = "its checksum record is missing"
        elif read_json(record).get("sha256") != sha256_file(path):
            problem = "its sha256 does not match (corrupt or truncated)"
        if problem is None:
            try:
                return torch.load(path, map_location="cpu", weights_only=True), path
            except Exception as e:  # torch raises several types for unreadable files
                problem = f"it cannot be read ({type(e).__name__})"
        log.warning("training state %s is unusable: %s; trying the one before", path, problem)
    return None
