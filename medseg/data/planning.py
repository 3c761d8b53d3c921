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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ANISOTROPY_THRESHOLD = 3.0
#: Tensors kept per voxel and feature channel in one training step of a U-Net level (conv output,
#: norm output, activation, skip/concatenation and their gradients), fitted on CPU measurements.
ACTIVATIONS_PER_LEVEL = 10.0
BYTES_FP32 = 4


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


def estimate_memory_gb(patch: Sequence[int], model: Mapping[str, Any], in_channels: int, num_classes: int,
                       batch_size: int) -> float:
    """Estimated memory (GB) of one fp32 training step with AdamW for a U-Net on ``patch``.

    Activations: per level, ``ACTIVATIONS_PER_LEVEL`` tensors of ``channels[level]`` features at
    that level's resolution (a level with residual units keeps about twice as many); weights,
    gradients and two Adam moments for the parameters; input and output tensors.
    """
    channels = [int(c) for c in model["channels"]]
    strides = [1] + [int(s) for s in model["strides"]]
    res = 1 + min(int(model.get("num_res_units", 0)), 2) * 0.5
    voxels = float(np.prod([int(p) for p in patch]))
    dims = len([p for p in patch if int(p) > 1]) or 1
    act = 0.0
    scale = 1.0
    for c, s in zip(channels, strides):
        scale *= s ** dims
        act += ACTIVATIONS_PER_LEVEL * res * c * voxels / scale
    act += voxels * (in_channels + 3 * num_classes)
    params = _parameter_estimate(channels, in_channels, num_classes, dims)
    total = batch_size * act * BYTES_FP32 + params * 4 * BYTES_FP32
    return total / 1024**3


def _parameter_estimate(channels: Sequence[int], in_ch: int, out_ch: int, dims: int) -> float:
    k = 3**dims
    chans = [in_ch, *channels]
    enc = sum(k * a * b for a, b in zip(chans, chans[1:]))
    return 2.0 * enc + k * channels[0] * out_ch


def plan_patch(median_shape: Sequence[float], model: Mapping[str, Any], in_channels: int, num_classes: int,
               batch_size: int, budget_gb: float, divisor: int, spatial_dims: int = 3,
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
