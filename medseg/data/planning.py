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
#: Memory model of one training step (fp32, AdamW, Dice + cross-entropy), calibrated with
#: ``bench/plan_memory.py`` against the peak RSS of real CPU steps (48³-96³ patches, batch 1-2,
#: 0 or 1 residual units). MONAI's U-Net downsamples in its first layer, so level ``l`` holds
#: ``channels[l]`` features at ``1 / prod(strides[:l + 1])`` of the patch.
FLOATS_PER_FEATURE = 10.0      # conv, norm and activation outputs and their gradients, per level
RESIDUAL_FACTOR = 2.3          # extra per residual unit (up to two counted)
FLOATS_PER_CLASS = 6.0         # full-resolution logits, softmax, one-hot target, their gradients
SAFETY = 1.25                  # allocator slack, cuDNN workspaces on GPUs
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

    Activations per level (see the constants above), input and full-resolution outputs per
    sample; weights, gradients and two Adam moments for the parameters; times ``SAFETY``.
    """
    channels = [int(c) for c in model["channels"]]
    strides = [int(s) for s in model["strides"]] + [2]
    res = 1 + RESIDUAL_FACTOR * min(int(model.get("num_res_units", 0)), 2)
    voxels = float(np.prod([int(p) for p in patch]))
    dims = len([p for p in patch if int(p) > 1]) or 1
    per_voxel = in_channels + FLOATS_PER_CLASS * num_classes
    scale = 1.0
    for c, s in zip(channels, strides):
        scale *= s ** dims
        per_voxel += FLOATS_PER_FEATURE * res * c / scale
    params = _parameter_estimate(channels, in_channels, num_classes, dims)
    total = (batch_size * voxels * per_voxel + 4 * params) * BYTES_FP32 * SAFETY
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
