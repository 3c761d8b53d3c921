"""``train``: fit the ReLU U-Net on the preprocessed cache written by ``prepare``.

Inputs: ``paths.prepared`` (the prepare folder). Outputs: ``best.pt``, ``last.pt``,
``metrics.jsonl``, ``tensorboard/``, ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medseg.data.dataset import CachedCase
from medseg.data.labels import LabelSpec
from medseg.engine.trainer import fit
from medseg.errors import ConfigError, DataError
from medseg.models.unet import size_divisor, volume_patch
from medseg.stages.common import plain, require_path
from medseg.utils.files import read_json

log = logging.getLogger(__name__)


def load_prepared(prepared: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``datalist.json`` and ``plan.json`` of a prepare folder."""
    for name in ("datalist.json", "plan.json"):
        if not (prepared / name).is_file():
            raise DataError(prepared / name, "not found; is paths.prepared a prepare output folder?")
    return read_json(prepared / "datalist.json"), read_json(prepared / "plan.json")


def check_patch(patch: list[int], strides: list[int]) -> None:
    """Refuse patch sizes the U-Net cannot take."""
    div = size_divisor(strides)
    bad = [p for p in patch if p % div]
    if bad:
        raise ConfigError(f"train.patch_size={patch}: every size must be a multiple of {div} "
                          f"(the product of model.strides={strides})")


def train_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the train stage (see module docstring)."""
    prepared = require_path(cfg, "prepared", "train")
    datalist, plan = load_prepared(prepared)
    if not datalist["train"]:
        raise DataError(prepared / "datalist.json", "the training split is empty")
    model_cfg = plain(cfg.model)
    train_cfg = plain(cfg.train)
    if train_cfg.get("patch_size") is None:  # explicit config wins over the plan
        train_cfg["patch_size"] = plan["patch_size"]
    patch = volume_patch(model_cfg, train_cfg["patch_size"])
    check_patch([int(p) for p in train_cfg["patch_size"]], model_cfg["strides"])
    labels = LabelSpec.from_json(plan["labels"])
    train_cases = [CachedCase.load(e) for e in datalist["train"]]
    val_cases = [CachedCase.load(e) for e in datalist["validation"]]
    channels = plan["preprocessing"]["channels"]
    log.info("train: %d training and %d validation cases, patch %s, batch %d",
             len(train_cases), len(val_cases), train_cfg["patch_size"], train_cfg["batch_size"])
    meta = {"plan": plan, "model": model_cfg, "patch_size": patch,
            "in_channels": len(channels), "num_classes": labels.num_classes}
    result = fit(train_cfg, model_cfg, train_cases, val_cases, labels, len(channels), out_dir, meta)
    log.info("train: best validation mean Dice %.4f at epoch %d; %d epochs, %d iterations in %.0f s (%s)",
             result.best_metric, result.best_epoch, result.epochs_run, result.iterations,
             result.seconds, result.stopped_by)
    return {"best_val_mean_dice": result.best_metric, "best_epoch": result.best_epoch,
            "epochs": result.epochs_run, "iterations": result.iterations,
            "train_seconds": result.seconds, "stopped_by": result.stopped_by,
            "best_checkpoint": str(result.best_checkpoint), "last_checkpoint": str(result.last_checkpoint)}
