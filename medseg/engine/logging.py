"""Training logs: a live progress bar, ``metrics.jsonl``, TensorBoard and optional MLflow.

The progress bar (tqdm) shows loss, best validation Dice, iterations/s and the ETA. Every epoch
appends one JSON line (loss, learning rate, data-wait fraction, validation Dice per region) and
writes the same scalars to TensorBoard (``tensorboard/``) and, with ``train.mlflow=true``, to an
MLflow run in a local file store (``train.mlflow_uri``, default ``<train folder>/mlruns``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medseg.errors import ConfigError

log = logging.getLogger("medseg.engine.trainer")


class TrainingLog:
    """All per-step and per-epoch reporting of :func:`medseg.engine.trainer.fit`.

    Args:
        out_dir: train output folder.
        cfg: the ``train`` config (``progress``, ``tensorboard``, ``mlflow``, ``mlflow_uri``).
        total: planned iterations.
        epoch: first epoch of this call (> 0 after a resume).
        iteration: iterations already done.
        enabled: ``False`` on non-zero ranks of a distributed run.
    """

    def __init__(self, out_dir: Path, cfg: Mapping[str, Any], total: int, epoch: int, iteration: int,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.bar = tqdm(total=total, initial=min(iteration, total), desc="train", unit="it", dynamic_ncols=True,
                        leave=False, disable=not (enabled and cfg.get("progress", True)))
        self.writer = _tensorboard(out_dir) if enabled and cfg.get("tensorboard") else None
        self.mlflow = _mlflow(out_dir, cfg) if enabled and cfg.get("mlflow") else None

    def step(self, epoch: int, losses: Sequence[float], best: float) -> None:
        """After each iteration: advance the bar."""
        self.bar.update(1)
        self.bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.3f}",
                             best=f"{best:.3f}" if np.isfinite(best) else "-")

    def epoch(self, record: Mapping[str, Any]) -> None:
        """After each epoch: JSONL line, TensorBoard and MLflow scalars, one log line."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {"train/loss": record["loss"], "train/lr": record["lr"],
                   "train/data_wait_fraction": record["data_wait_fraction"]}
        scalars.update({f"val/dice_{r}": v for r, v in record.get("val_dice", {}).items()})
        if "val_mean_dice" in record:
            scalars["val/mean_dice"] = record["val_mean_dice"]
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, record["epoch"])
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in scalars.items()}, step=record["epoch"])
        val = ""
        if "val_dice" in record:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in record["val_dice"].items())
            val = f", val mean Dice {record['val_mean_dice']:.4f} ({parts})"
        log.info("epoch %d: loss %.4f%s", record["epoch"], record["loss"], val)

    def close(self) -> None:
        """Close the bar and the writers."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _tensorboard(out_dir: Path):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs go to JSONL only
        log.warning("tensorboard is not installed; writing metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _mlflow(out_dir: Path, cfg: Mapping[str, Any]):  # noqa: ANN202 - optional dependency
    try:
        import mlflow
    except ImportError as e:
        raise ConfigError("train.mlflow=true needs MLflow: pip install 'medseg[mlflow]'") from e
    uri = cfg.get("mlflow_uri") or (out_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):  # MLflow 3 keeps the local file store behind an explicit opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(str(cfg.get("mlflow_experiment") or "medseg"))
    mlflow.start_run()
    mlflow.log_params({k: str(v) for k, v in cfg.items() if not isinstance(v, Mapping)})
    return mlflow
