"""Experiment planning from the dataset fingerprint, the way nnU-Net plans.

- **Target spacing**: the median voxel spacing of the dataset (along R, A, S). When the median is
  strongly anisotropic (coarsest / finest > 3), the coarse axis takes the 10th percentile of its
  spacings instead, so that thick-slice outliers do not blur the whole dataset.
- **Patch size**: starts at the median image shape after resampling (rounded up to a multiple of
  the U-Net's size divisor) and shrinks the axis that is largest relative to that shape until the
  estimated memory of one training step fits ``memory_budget_gb``.

Explicit configuration values always win; ``plan.json`` records both the planned and the used
values and why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.config import DataConfig, ModelConfig, TrainConfig
from medseg.data.labels import LabelSpec
from medseg.models.memory import size_divisor, training_step_gb

log = logging.getLogger(__name__)

ANISOTROPY_THRESHOLD = 3.0


def plan_spacing(spacings: np.ndarray) -> tuple[list[float], str]:
    """Target spacing (mm, R/A/S) and a sentence saying how it was derived."""
    spacings = np.asarray(spacings, dtype=float)
    median = np.median(spacings, axis=0)
    if median.max() / median.min() > ANISOTROPY_THRESHOLD:
        axis = int(np.argmax(median))
        target = median.copy()
        target[axis] = float(np.percentile(spacings[:, axis], 10))
        return target.tolist(), (f"anisotropic median spacing {median.round(3).tolist()}: axis {axis} "
                                 f"uses the 10th percentile {target[axis]:.3f} mm")
    return median.tolist(), "median spacing of the dataset"


def estimate_memory_gb(patch: Sequence[int], model: ModelConfig | Mapping[str, Any], in_channels: int,
                       num_classes: int, batch_size: int) -> float:
    """Estimated memory (GB) of one fp32 training step with AdamW for a U-Net on ``patch``.

    The memory model is :func:`medseg.models.memory.training_step_gb` (calibrated with
    ``bench/plan_memory.py``), the same one the predictor uses for inference windows.
    """
    return training_step_gb(patch, model, in_channels, num_classes, batch_size)


def plan_patch(median_shape: Sequence[float], model: ModelConfig | Mapping[str, Any], in_channels: int,
               num_classes: int, batch_size: int, budget_gb: float, divisor: int, spatial_dims: int = 3,
               max_patch: int = 256) -> tuple[list[int], float]:
    """Largest patch (multiples of ``divisor``) near the median shape that fits ``budget_gb``.

    Returns:
        ``(patch, estimated_gb)``; ``patch`` has ``spatial_dims`` entries (a 2D model plans over
        the first two axes).
    """
    shape = [float(s) for s in median_shape][:spatial_dims]
    patch = [int(min(max_patch, max(divisor, divisor * np.ceil(s / divisor)))) for s in shape]
    vol = [*patch, 1] if spatial_dims == 2 else patch
    est = estimate_memory_gb(vol, model, in_channels, num_classes, batch_size)
    while est > budget_gb and max(patch) > divisor:
        ratios = [p / max(s, 1.0) for p, s in zip(patch, shape)]
        candidates = [i for i in range(len(patch)) if patch[i] > divisor]
        axis = max(candidates, key=lambda i: (ratios[i], patch[i]))
        patch[axis] -= divisor
        vol = [*patch, 1] if spatial_dims == 2 else patch
        est = estimate_memory_gb(vol, model, in_channels, num_classes, batch_size)
    return patch, float(est)


def make_plan(stats: list[dict[str, Any]], data: DataConfig, model: ModelConfig, train: TrainConfig,
              in_channels: int, labels: LabelSpec) -> dict[str, Any]:
    """Target spacing and patch size from the verified cases; explicit config values win.

    Args:
        stats: per-case statistics (:func:`medseg.data.verify.case_stats`: ``shape`` and
            ``spacing`` along R, A, S).
        data: the ``data`` section (:class:`~medseg.config.DataConfig`; ``target_spacing``,
            ``memory_budget_gb``).
        model: the ``model`` section (:class:`~medseg.config.ModelConfig`).
        train: the ``train`` section (:class:`~medseg.config.TrainConfig`; ``batch_size``, ``patch_size``).
        in_channels: number of image channels.
        labels: the dataset's labels.

    Returns:
        The plan (the part of ``plan.json`` that planning decides): used and planned values and why.
    """
    spacings = np.asarray([s["spacing"] for s in stats])
    planned_spacing, why_spacing = plan_spacing(spacings)
    two_d = all(s["shape"][2] == 1 for s in stats)
    if two_d:  # single-slice images keep their (nominal) slice spacing
        planned_spacing[2] = float(np.median(spacings[:, 2]))
    target = [float(v) for v in data.target_spacing] if data.target_spacing else planned_spacing
    shapes = np.asarray([s["shape"] for s in stats], dtype=float)
    median_shape = np.median(shapes * spacings / np.asarray(target), axis=0)
    patch, planned_patch, est, used_est = _plan_patch_for(median_shape, data, model, train, in_channels,
                                                          labels.num_classes)
    return {
        "target_spacing": target,
        "patch_size": patch,
        "batch_size": int(train.batch_size),
        "planned": {"target_spacing": planned_spacing, "target_spacing_reason": why_spacing,
                    "patch_size": planned_patch, "estimated_memory_gb": round(est, 3)},
        "explicit": {"target_spacing": bool(data.target_spacing), "patch_size": bool(train.patch_size)},
        "estimated_memory_gb": round(used_est, 3),
        "memory_budget_gb": float(data.memory_budget_gb),
        "median_shape_at_target": [float(v) for v in median_shape],
        "two_dimensional": two_d,
    }


def _plan_patch_for(median_shape: np.ndarray, data: DataConfig, model: ModelConfig, train: TrainConfig,
                    in_channels: int, num_classes: int) -> tuple[list[int], list[int], float, float]:
    """``(used patch, planned patch, planned estimate GB, used estimate GB)``; warns when an explicit
    ``train.patch_size`` exceeds the memory budget."""
    dims = int(model.spatial_dims)
    budget = float(data.memory_budget_gb)
    batch = int(train.batch_size)
    planned_patch, est = plan_patch(median_shape, model, in_channels, num_classes, batch, budget,
                                    size_divisor([int(s) for s in model.strides]), dims)
    patch = [int(p) for p in train.patch_size] if train.patch_size else planned_patch
    vol = [*patch, 1] if dims == 2 else patch
    used_est = estimate_memory_gb(vol, model, in_channels, num_classes, batch)
    if used_est > budget:
        log.warning("plan: train.patch_size=%s needs about %.1f GB per step, over data.memory_budget_gb=%.1f",
                    patch, used_est, budget)
    return patch, planned_patch, est, used_est

