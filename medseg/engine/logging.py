"""Training logs: live progress, ``metrics.jsonl``, TensorBoard and optional MLflow.

Live progress depends on where stderr goes. On a terminal (and with ``train.progress=true``) a tqdm
bar shows loss, best validation Dice, iterations/s and the ETA. When stderr is not a terminal
(Docker, Slurm, CI, a file), the bar's carriage-return redraws would fill the log, so instead one
``logging`` record is emitted at most every 30 s (iterations done/total, loss, it/s, ETA); each
epoch ends with one log line in both cases. Every epoch appends one JSON line (loss, learning rate,
data-wait fraction, validation Dice per region) and writes the same scalars to TensorBoard
(``tensorboard/``) and, with ``train.mlflow=true``, to an MLflow run in a local file store
(``train.mlflow_uri``, default ``<train folder>/mlruns``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm.auto import tqdm

from medseg.config import TrainConfig, choice
from medseg.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds between two progress records when stderr is not a terminal.
LOG_EVERY_S = 30.0


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown).

    >>> format_eta(3725.4), format_eta(float("inf"))
    ('1:02:05', '?')
    """
    if not math.isfinite(seconds):
        return "?"
    return str(dt.timedelta(seconds=int(round(max(seconds, 0.0)))))


class Throughput:
    """Iterations per second and ETA of the iterations done since construction.

    Args:
        total: planned iterations of the whole run.
        done: iterations already done (after a resume).
        clock: seconds (monotonic); replaceable in tests.
    """

    def __init__(self, total: int, done: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.first, self.clock = total, done, clock
        self.t0 = clock()

    def rate(self, done: int, now: float | None = None) -> float:
        """Iterations per second so far (0 before the first)."""
        elapsed = (self.clock() if now is None else now) - self.t0
        return (done - self.first) / elapsed if elapsed > 0 else 0.0

    def describe(self, done: int, now: float | None = None) -> str:
        """``iteration d/t, r it/s, ETA h:mm:ss``."""
        rate = self.rate(done, now)
        eta = (self.total - done) / rate if rate > 0 else math.inf
        return f"iteration {done}/{self.total}, {rate:.2f} it/s, ETA {format_eta(eta)}"


class ProgressLines:
    """Periodic one-line progress records, for logs that are files rather than terminals.

    Args:
        total: planned iterations.
        done: iterations already done.
        every_s: seconds between two records.
        clock: seconds (monotonic); replaceable in tests.
    """

    def __init__(self, total: int, done: int, every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.done, self.every_s, self.clock = done, every_s, clock
        self.speed = Throughput(total, done, clock)
        self.last = self.speed.t0

    def step(self, epoch: int, losses: Sequence[float]) -> None:
        """After each iteration: log a record when ``every_s`` have passed since the last."""
        self.done += 1
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("train: epoch %d, %s, loss %.4f", epoch,
                     self.speed.describe(self.done, now), float(np.mean(losses[-20:])))


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


class TrainingLog:
    """All per-step and per-epoch reporting of :func:`medseg.engine.trainer.fit`.

    Args:
        out_dir: train output folder.
        cfg: the ``train`` config (``progress``, ``tensorboard``, ``mlflow``, ``mlflow_uri``,
            ``mlflow_experiment``).
        total: planned iterations.
        epoch: first epoch of this call (> 0 after a resume).
        iteration: iterations already done.
        enabled: ``False`` on non-zero ranks of a distributed run.
        stream: where live progress goes (default ``sys.stderr``); a bar on a terminal, periodic
            log records otherwise.
        every_s: seconds between two progress records on a non-terminal stream.
    """

    def __init__(self, out_dir: Path, cfg: TrainConfig, total: int, epoch: int, iteration: int,
                 enabled: bool = True, stream: IO[str] | None = None, every_s: float = LOG_EVERY_S) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.speed = Throughput(total, iteration)
        stream = sys.stderr if stream is None else stream
        live = enabled and cfg.progress
        terminal = _is_terminal(stream)
        self.bar = (tqdm(total=total, initial=min(iteration, total), desc="train", unit="it", dynamic_ncols=True,
                         leave=False, file=stream) if live and terminal else None)
        self.lines = ProgressLines(total, iteration, every_s) if live and not terminal else None
        self.writer = _tensorboard(out_dir) if enabled and cfg.tensorboard else None
        self.mlflow = _mlflow(out_dir, cfg) if enabled and cfg.mlflow else None

    def step(self, epoch: int, losses: Sequence[float], best: float) -> None:
        """After each iteration: advance the bar, or log a progress record when one is due."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}",
                                 best=f"{best:.3f}" if np.isfinite(best) else "-")
        elif self.lines is not None:
            self.lines.step(epoch, losses)

    def replan(self, total: int) -> None:
        """The planned iterations changed (a time budget's estimate): the bar's and the ETA's total."""
        self.speed.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()
        if self.lines is not None:
            self.lines.speed.total = total

    def epoch(self, record: Mapping[str, Any]) -> None:
        """After each epoch: JSONL line, TensorBoard and MLflow scalars, one log line."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = _scalars(record)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, record["epoch"])
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in scalars.items()}, step=record["epoch"])
        val = ""
        if "val_dice" in record:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in record["val_dice"].items())
            val = f", val mean Dice {record['val_mean_dice']:.4f} ({parts})"
            if "val_mean_dice_ema" in record:
                val += f", moving average {record['val_mean_dice_ema']:.4f}"
        log.info("epoch %d: loss %.4f, %s%s", record["epoch"], record["loss"],
                 self.speed.describe(int(record["iteration"])), val)

    def close(self) -> None:
        """Close the bar and the writers."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard / MLflow scalars of an epoch record."""
    scalars = {"train/loss": record["loss"], "train/lr": record["lr"],
               "train/data_wait_fraction": record["data_wait_fraction"]}
    scalars.update({f"val/dice_{r}": v for r, v in record.get("val_dice", {}).items()})
    if "val_mean_dice" in record:
        scalars["val/mean_dice"] = record["val_mean_dice"]
    if "val_mean_dice_ema" in record:
        scalars["val/mean_dice_ema"] = record["val_mean_dice_ema"]
    return scalars


def _tensorboard(out_dir: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs go to JSONL only
        log.warning("tensorboard is not installed; writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _mlflow(out_dir: Path, cfg: TrainConfig):  # noqa: ANN202 - optional dependency
    try:
        import mlflow
    except ImportError as e:
        raise ConfigError("train.mlflow=true needs MLflow: pip install 'medseg[mlflow]'") from e
    uri = cfg.mlflow_uri or (out_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):  # MLflow 3 keeps the local file store behind an explicit opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.mlflow_experiment or "medseg")
    mlflow.start_run()
    mlflow.log_params({f.name: choice(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                       if not dataclasses.is_dataclass(getattr(cfg, f.name))})
    return mlflow
