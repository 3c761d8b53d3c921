"""``train``: fit the ReLU U-Net on the preprocessed cache written by ``prepare``.

Inputs: ``paths.prepared`` (the prepare folder). Outputs: ``best.pt``, ``last.pt``,
``metrics.jsonl``, ``tensorboard/``, ``states/``, ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.config import ModelConfig, TrainConfig, as_schema, choice
from medseg.data.dataset import CachedCase
from medseg.data.prepared import PreparedDataset
from medseg.data.splits import check_patch, fold_split
from medseg.engine.trainer import FitResult, fit
from medseg.inference.targets import Target
from medseg.models.unet import volume_patch
from medseg.stages.common import require_path

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        best_checkpoint: ``best.pt`` (highest moving average of the validation mean Dice, ``train.best_ema``;
            lowest loss without validation cases).
        last_checkpoint: ``last.pt`` (the last epoch).
        summary: the stage summary (``summary.json``).
        fit: the trainer's result.
    """

    best_checkpoint: Path
    last_checkpoint: Path
    summary: dict[str, Any]
    fit: FitResult


def train(cfg: Any, prepared: PreparedDataset, out_dir: Path) -> TrainResult:
    """Train on ``prepared`` into ``out_dir``.

    Args:
        cfg: the full config (``train``, ``model``, ``data.split_seed`` and
            ``evaluate.inference.min_component_ml``, which validation applies, are read).
        prepared: the prepare output.
        out_dir: the train folder (checkpoints, states, logs).

    Raises:
        DataError: the training split is empty.
        ConfigError: the patch size does not suit the model, or the fold is out of range.
    """
    train_cfg, model_cfg = as_schema(cfg.train, TrainConfig), as_schema(cfg.model, ModelConfig)
    train_entries, val_entries = prepared.split("train"), list(prepared.datalist.get("validation", []))
    if train_cfg.patch_size is None:  # explicit config wins over the plan
        train_cfg = dataclasses.replace(train_cfg, patch_size=prepared.patch_size)
    volume_patch(model_cfg, train_cfg.patch_size)
    check_patch([int(p) for p in train_cfg.patch_size], model_cfg.strides)
    target = Target(choice(train_cfg.target), prepared.labels)
    if train_cfg.fold is not None:
        train_entries, val_entries = fold_split(prepared.datalist, train_cfg.fold, train_cfg.folds,
                                                int(cfg.data.split_seed))
    train_cases = [CachedCase.load(e) for e in train_entries]
    val_cases = [CachedCase.load(e) for e in val_entries]
    log.info("train: %d training and %d validation cases%s, patch %s, batch %d, target %s, loss %s",
             len(train_cases), len(val_cases),
             f" (fold {train_cfg.fold} of {train_cfg.folds})" if train_cfg.fold is not None else "",
             list(train_cfg.patch_size), train_cfg.batch_size, target.mode, choice(train_cfg.loss))
    # validation scores what evaluate and predict will: after the same small-component removal
    min_ml = float(cfg.evaluate.inference.min_component_ml or 0.0)
    result = fit(train_cfg, model_cfg, train_cases, val_cases, target, len(prepared.channels), out_dir,
                 plan=prepared.plan, min_component_ml=min_ml)
    return TrainResult(result.best_checkpoint, result.last_checkpoint, _summary(result, train_cfg.fold), result)


def _summary(result: FitResult, fold: int | None) -> dict[str, Any]:
    """Log the outcome; the stage summary."""
    best = result.best_metric if math.isfinite(result.best_metric) else None
    log.info("train: best.pt from epoch %d (validation mean Dice %s); %d epochs, %d iterations in %.0f s (%s)",
             result.best_epoch, f"{best:.4f}" if best is not None else "n/a", result.epochs_run,
             result.iterations, result.seconds, result.stopped_by)
    return {"best_val_mean_dice": best, "best_val_mean_dice_ema": result.best_metric_ema,
            "best_epoch": result.best_epoch, "epochs": result.epochs_run, "iterations": result.iterations,
            "train_seconds": result.seconds, "stopped_by": result.stopped_by, "resumed_from": result.resumed_from,
            "fold": fold, "best_checkpoint": str(result.best_checkpoint),
            "last_checkpoint": str(result.last_checkpoint), "budget": result.budget,
            "peak_memory_gb": result.peak_memory_gb}


def train_stage(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Run the train stage (see module docstring) on ``paths.prepared``."""
    prepared = PreparedDataset.read(require_path(cfg, "prepared", "train"))
    return train(cfg, prepared, out_dir).summary
