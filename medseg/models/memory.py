"""How much memory the U-Net needs: one activation model for training steps and inference windows.

MONAI's U-Net downsamples in its first layer, so level ``l`` holds ``channels[l]`` features at
``1 / prod(strides[:l + 1])`` of the window (per axis, to the power of the spatial dimensions).
Per voxel of the window a network needs

    in_channels + floats_per_class * classes + sum_l floats_per_feature * res * channels[l] / scale_l

floats, where ``res = 1 + residual_factor * min(num_res_units, 2)``; times the batch size and four
bytes, plus ``param_copies`` copies of the parameters, times ``safety``. :data:`TRAINING_STEP` is
calibrated with ``bench/plan_memory.py`` against the peak RSS of real CPU training steps;
:data:`INFERENCE` counts what one batch of windows keeps alive without gradients (the encoder
features held for the skip connections, the decoder's, the logits and probabilities).

The model config is a :class:`medseg.config.ModelConfig` or a mapping with the same keys (as
checkpoints and artifacts record it). Nothing here imports :mod:`medseg.data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BYTES_FP32 = 4


@dataclass(frozen=True)
class ActivationModel:
    """Constants of the memory model (see the module docstring).

    Args:
        floats_per_feature: floats per feature map voxel and level (conv, norm and activation
            outputs, and their gradients when training).
        residual_factor: extra per residual unit (up to two counted).
        floats_per_class: full-resolution floats per output channel (logits, probabilities,
            one-hot target and gradients when training).
        param_copies: copies of the parameters held (weights, gradients, two Adam moments).
        safety: allocator slack, cuDNN workspaces on GPUs.
    """

    floats_per_feature: float
    residual_factor: float
    floats_per_class: float
    param_copies: float
    safety: float


#: One fp32 training step with AdamW and Dice + cross-entropy (48³-96³ patches, batch 1-2).
TRAINING_STEP = ActivationModel(floats_per_feature=10.0, residual_factor=2.3, floats_per_class=6.0,
                                param_copies=4.0, safety=1.25)
#: One batch of sliding windows at inference: each level's encoder and decoder features (conv,
#: norm and ReLU outputs) alive at once; logits, probabilities and their running sum per class.
INFERENCE = ActivationModel(floats_per_feature=6.0, residual_factor=2.3, floats_per_class=3.0,
                            param_copies=1.0, safety=1.0)


def _field(model: Any, name: str, default: Any = None) -> Any:
    """A model setting from a ModelConfig (attribute) or a mapping (key)."""
    if isinstance(model, Mapping):
        return model.get(name, default)
    return getattr(model, name, default)


def parameter_estimate(channels: Sequence[int], in_channels: int, out_channels: int, dims: int) -> float:
    """Approximate parameter count of the U-Net (3-wide kernels, encoder and decoder)."""
    k = 3**dims
    chans = [in_channels, *channels]
    enc = sum(k * a * b for a, b in zip(chans, chans[1:]))
    return 2.0 * enc + k * channels[0] * out_channels


def network_bytes(patch: Sequence[int], model: Any, in_channels: int, out_channels: int, batch_size: int,
                  kind: ActivationModel) -> float:
    """Estimated bytes of one network pass of ``batch_size`` windows of ``patch`` voxels.

    Args:
        patch: the window (3 entries; a 2D model's window ends in 1, and axes of size 1 do not count
            as spatial dimensions).
        model: the model config (``channels``, ``strides``, ``num_res_units``).
        in_channels: image channels.
        out_channels: network output channels.
        batch_size: windows per pass.
        kind: :data:`TRAINING_STEP` or :data:`INFERENCE`.
    """
    channels = [int(c) for c in _field(model, "channels", [])]
    strides = [int(s) for s in _field(model, "strides", [])] + [2]
    res = 1 + kind.residual_factor * min(int(_field(model, "num_res_units", 0) or 0), 2)
    voxels = float(np.prod([int(p) for p in patch]))
    dims = len([p for p in patch if int(p) > 1]) or 1
    per_voxel = in_channels + kind.floats_per_class * out_channels
    scale = 1.0
    for c, s in zip(channels, strides):
        scale *= s**dims
        per_voxel += kind.floats_per_feature * res * c / scale
    params = parameter_estimate(channels, in_channels, out_channels, dims) if channels else 0.0
    return (batch_size * voxels * per_voxel + kind.param_copies * params) * BYTES_FP32 * kind.safety


def training_step_gb(patch: Sequence[int], model: Any, in_channels: int, num_classes: int,
                     batch_size: int) -> float:
    """Estimated memory (GB) of one fp32 training step with AdamW for the U-Net on ``patch``."""
    return network_bytes(patch, model, in_channels, num_classes, batch_size, TRAINING_STEP) / 1024**3


def inference_window_bytes(patch: Sequence[int], model: Any | None, in_channels: int, out_channels: int,
                           batch_size: int) -> int:
    """Estimated bytes of one batch of windows through the network at inference.

    Without a model config (a bare network callable) each window voxel is counted at eight floats
    per input and output channel.
    """
    if not model:
        return int(batch_size * np.prod([int(p) for p in patch]) * BYTES_FP32 * (in_channels + out_channels) * 8)
    window = [int(p) for p in patch]
    if len(window) == 2:
        window.append(1)
    return int(network_bytes(window, model, in_channels, out_channels, batch_size, INFERENCE))


def size_divisor(strides: Sequence[int]) -> int:
    """Input sizes must be multiples of the product of the strides."""
    out = 1
    for s in strides:
        out *= int(s)
    return out
