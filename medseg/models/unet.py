"""The ReLU U-Net.

MONAI's ``UNet`` defaults to a parametric ReLU; medseg always builds it with ``act="RELU"`` and offers no
activation option. :func:`activation_types` lists the activation modules a network contains so
that tests (and ``train`` at start-up) can prove that ReLU is the only one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from medseg.errors import ConfigError

_ACTIVATION_BASES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn.modules.activation, n) for n in nn.modules.activation.__all__
    if n not in {"MultiheadAttention"}
)


def build_unet(model_cfg: Mapping[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """Build a MONAI U-Net whose every activation is ReLU.

    Args:
        model_cfg: ``spatial_dims``, ``channels``, ``strides``, ``num_res_units``, ``norm``,
            ``dropout`` (see :class:`medseg.config.ModelConfig`).
        in_channels: number of input image channels.
        out_channels: number of output classes (background included).

    Raises:
        ConfigError: on inconsistent channel/stride lists or unknown norm.
    """
    channels = [int(c) for c in model_cfg["channels"]]
    strides = [int(s) for s in model_cfg["strides"]]
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise ConfigError(f"model.channels needs >= 2 levels and model.strides one entry fewer; "
                          f"got channels={channels}, strides={strides}")
    norm = str(getattr(model_cfg["norm"], "value", model_cfg["norm"])).lower()
    if norm not in {"instance", "batch"}:
        raise ConfigError(f"model.norm={norm!r} is not known; valid: ['instance', 'batch']")
    dims = int(model_cfg["spatial_dims"])
    if dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 or 3, got {dims}")
    norm_arg: Any = ("INSTANCE", {"affine": True}) if norm == "instance" else "BATCH"
    return UNet(
        spatial_dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=strides,
        num_res_units=int(model_cfg.get("num_res_units", 0)),
        act="RELU",
        norm=norm_arg,
        dropout=float(model_cfg.get("dropout", 0.0)),
    )


def activation_types(model: nn.Module) -> set[type[nn.Module]]:
    """Return the classes of every activation module inside ``model``."""
    return {type(m) for m in model.modules() if isinstance(m, _ACTIVATION_BASES)}


def describe_model(model: nn.Module, divisor: Sequence[int] | None = None) -> dict[str, Any]:
    """Parameter count and activation names, for logs and metadata."""
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "activations": sorted(t.__name__ for t in activation_types(model)),
        "divisor": list(divisor) if divisor is not None else None,
    }


def size_divisor(strides: Sequence[int]) -> int:
    """Input sizes must be multiples of the product of the strides."""
    out = 1
    for s in strides:
        out *= int(s)
    return out


def check_relu_only(model: nn.Module) -> None:
    """Raise ``ConfigError`` if ``model`` holds any activation other than ReLU."""
    others = {t.__name__ for t in activation_types(model)} - {"ReLU"}
    if others:
        raise ConfigError(f"the U-Net must use ReLU only, found {sorted(others)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def dummy_input(in_channels: int, patch: Sequence[int]) -> torch.Tensor:
    """A zero input of batch 1 for tracing and export checks."""
    return torch.zeros(1, in_channels, *[int(p) for p in patch])
