"""``train``: fit the ReLU U-Net on the preprocessed cache written by ``prepare``.

Inputs: ``paths.prepared`` (the prepare folder). Outputs: ``best.pt``, ``last.pt``,
``metrics.jsonl``, ``tensorboard/``, ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from medseg.data.dataset import CachedCase
from medseg.data.labels import LabelSpec
from medseg.inference.targets import Target
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


def fold_split(datalist: dict[str, Any], fold: int, folds: int, seed: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train / validation entries of cross-validation ``fold`` of ``folds``.

    The pool is the prepared train and validation splits (the test split stays held out); cases
    are sorted by name and dealt into ``folds`` groups in an order drawn from ``seed``, so every
    fold of every run sees the same partition.
    """
    if not 0 <= fold < folds:
        raise ConfigError(f"train.fold={fold} must be in 0..{folds - 1} (train.folds={folds})")
    pool = sorted(datalist["train"] + datalist["validation"], key=lambda e: e["name"])
    if len(pool) < folds:
        raise ConfigError(f"train.folds={folds} needs at least {folds} training cases, have {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))
    val_idx = set(order[fold::folds].tolist())
    return ([e for i, e in enumerate(pool) if i not in val_idx], [e for i, e in enumerate(pool) if i in val_idx])


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
    target = Target(str(train_cfg["target"]), LabelSpec.from_json(plan["labels"]))
    train_entries, val_entries = datalist["train"], datalist["validation"]
    if train_cfg.get("fold") is not None:
        train_entries, val_entries = fold_split(datalist, int(train_cfg["fold"]), int(train_cfg["folds"]),
                                                int(cfg.data.split_seed))
    train_cases = [CachedCase.load(e) for e in train_entries]
    val_cases = [CachedCase.load(e) for e in val_entries]
    channels = plan["preprocessing"]["channels"]
    log.info("train: %d training and %d validation cases%s, patch %s, batch %d, target %s, loss %s",
             len(train_cases), len(val_cases),
             f" (fold {train_cfg['fold']} of {train_cfg['folds']})" if train_cfg.get("fold") is not None else "",
             train_cfg["patch_size"], train_cfg["batch_size"], target.mode, train_cfg["loss"])
    meta = {"plan": plan, "model": model_cfg, "patch_size": patch, "target": target.to_json(),
            "in_channels": len(channels), "num_classes": target.channels, "fold": train_cfg.get("fold"),
            "validation_cases": [e["name"] for e in val_entries]}
    result = fit(train_cfg, model_cfg, train_cases, val_cases, target, len(channels), out_dir, meta)
    best = result.best_metric if math.isfinite(result.best_metric) else None
    log.info("train: best validation mean Dice %s at epoch %d; %d epochs, %d iterations in %.0f s (%s)",
             f"{best:.4f}" if best is not None else "n/a", result.best_epoch, result.epochs_run,
             result.iterations, result.seconds, result.stopped_by)
    return {"best_val_mean_dice": best, "best_epoch": result.best_epoch,
            "epochs": result.epochs_run, "iterations": result.iterations,
            "train_seconds": result.seconds, "stopped_by": result.stopped_by, "resumed_from": result.resumed_from,
            "fold": train_cfg.get("fold"),
            "best_checkpoint": str(result.best_checkpoint), "last_checkpoint": str(result.last_checkpoint)}
