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

from medseg.config import choice
from medseg.errors import ConfigError

_ACTIVATION_BASES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn.modules.activation, n) for n in nn.modules.activation.__all__
    if n not in {"MultiheadAttention"}
)


def build_unet(model_cfg: Mapping[str, Any], in_channels: int, out_channels: int,
               inference: bool = False) -> nn.Module:
    """Build a MONAI U-Net whose every activation is ReLU.

    With ``deep_supervision`` the network is MONAI's ``DynUNet`` (nnU-Net's architecture: two
    3-wide convolutions per level, strided downsampling, transposed-convolution upsampling) with
    ReLU, whose training output stacks the full-resolution output and ``deep_supr_num`` upsampled
    lower-level outputs as ``(B, 1 + deep_supr_num, K, ...)``; in eval mode, and when built with
    ``inference=True`` (for export: same weights minus the supervision heads), it returns the
    full-resolution output only. Otherwise it is MONAI's ``UNet``.

    Args:
        model_cfg: ``spatial_dims``, ``channels``, ``strides``, ``num_res_units``, ``norm``,
            ``dropout``, ``deep_supervision``, ``deep_supr_num`` (see :class:`medseg.config.ModelConfig`).
        in_channels: number of input image channels.
        out_channels: number of output channels.
        inference: build without deep-supervision heads.

    Raises:
        ConfigError: on inconsistent channel/stride lists or unknown norm.
    """
    channels = [int(c) for c in model_cfg["channels"]]
    strides = [int(s) for s in model_cfg["strides"]]
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise ConfigError(f"model.channels needs >= 2 levels and model.strides one entry fewer; "
                          f"got channels={channels}, strides={strides}")
    norm = choice(model_cfg["norm"]).lower()
    if norm not in {"instance", "batch"}:
        raise ConfigError(f"model.norm={norm!r} is not known; valid: ['instance', 'batch']")
    dims = int(model_cfg["spatial_dims"])
    if dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 or 3, got {dims}")
    norm_arg: Any = ("INSTANCE", {"affine": True}) if norm == "instance" else "BATCH"
    if model_cfg.get("deep_supervision"):
        from monai.networks.nets import DynUNet

        supr = int(model_cfg.get("deep_supr_num", 2))
        if not 1 <= supr <= len(strides) - 1:
            raise ConfigError(f"model.deep_supr_num={supr} must be in 1..{len(strides) - 1} for {len(channels)} levels")
        return DynUNet(spatial_dims=dims, in_channels=in_channels, out_channels=out_channels,
                       kernel_size=[3] * len(channels), strides=[1, *strides], upsample_kernel_size=strides,
                       filters=channels, dropout=float(model_cfg.get("dropout", 0.0)) or None, norm_name=norm_arg,
                       act_name="RELU", deep_supervision=not inference, deep_supr_num=supr,
                       res_block=int(model_cfg.get("num_res_units", 0)) > 0)
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


class Slicewise(nn.Module):
    """Run a 2D network slice by slice over the last axis of a 3D input.

    Input ``(B, C, X, Y, Z)`` -> output ``(B, K, X, Y, Z)``; with ``Z = 1`` patches this is plain
    2D training, and at inference the usual 3D sliding window covers a volume slice-wise.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, sx, sy, sz = x.shape
        y = self.net(x.permute(0, 4, 1, 2, 3).reshape(b * sz, c, sx, sy))
        if y.dim() == 5:  # deep supervision while training: (b * sz, S, K, sx, sy)
            return y.reshape(b, sz, y.shape[1], y.shape[2], sx, sy).permute(0, 2, 3, 4, 5, 1)
        return y.reshape(b, sz, y.shape[1], sx, sy).permute(0, 2, 3, 4, 1)


def build_model(model_cfg: Mapping[str, Any], in_channels: int, out_channels: int,
                inference: bool = False) -> nn.Module:
    """The network used on volumes: the 3D U-Net, or the 2D U-Net applied slice-wise.

    Both take and return ``(B, C, X, Y, Z)`` tensors, so patch sampling, sliding windows and the
    exported artifact are the same for 2D and 3D models (a 2D model's patch ends in 1).
    ``inference=True`` drops deep-supervision heads (load weights with :func:`load_weights`).
    """
    net = build_unet(model_cfg, in_channels, out_channels, inference)
    return Slicewise(net) if int(model_cfg["spatial_dims"]) == 2 else net


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load trained weights; deep-supervision heads (absent from an inference model) are skipped."""
    result = model.load_state_dict(dict(state), strict=False)
    unexpected = [k for k in result.unexpected_keys if "deep_supervision_heads" not in k and "super_head" not in k]
    if result.missing_keys or unexpected:
        raise ConfigError(f"checkpoint does not match the model: missing {result.missing_keys[:5]}, "
                          f"unexpected {unexpected[:5]}")


def volume_patch(model_cfg: Mapping[str, Any], patch: Sequence[int]) -> list[int]:
    """The 3D patch a model trains on: ``patch + [1]`` for a 2D model."""
    patch = [int(p) for p in patch]
    dims = int(model_cfg["spatial_dims"])
    if len(patch) != dims:
        raise ConfigError(f"train.patch_size={patch} must have {dims} entries for model.spatial_dims={dims}")
    return patch + [1] if dims == 2 else patch


def activation_types(model: nn.Module) -> set[type[nn.Module]]:
    """Return the classes of every activation module inside ``model``."""
    return {type(m) for m in model.modules() if isinstance(m, _ACTIVATION_BASES)}


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


def architecture(model_cfg: Mapping[str, Any]) -> str:
    """Name of the network class the config builds."""
    return "MONAI DynUNet (deep supervision)" if model_cfg.get("deep_supervision") else "MONAI UNet"


def receptive_field(model_cfg: Mapping[str, Any]) -> int:
    """Theoretical receptive field (voxels along one axis) of MONAI's U-Net with 3-wide kernels.

    Encoder: per level one strided convolution (plus one more per residual unit); bottom level the
    same without stride; decoder: a strided transposed convolution per level (plus one more
    convolution per residual unit). Each convolution widens the field by ``2 x`` the current jump.
    """
    strides = [int(s) for s in model_cfg["strides"]]
    extra = int(model_cfg.get("num_res_units", 0))
    if model_cfg.get("deep_supervision"):  # DynUNet: two convolutions per level (three in a residual block)
        extra = 1 + (1 if extra else 0)
    rf, jump = 1, 1
    for s in strides:  # encoder: kernel 3 at the current jump, then the stride
        rf += 2 * jump * (1 + extra)
        jump *= s
    rf += 2 * jump * (1 + extra)  # bottom
    for s in reversed(strides):  # decoder
        jump //= s
        rf += 2 * jump * (1 + extra)
    return rf


def describe_model(model: nn.Module, model_cfg: Mapping[str, Any], patch: Sequence[int], in_channels: int,
                   out_channels: int, batch_size: int) -> str:
    """One line: architecture, parameters, receptive field and the memory estimate for ``patch``."""
    from medseg.data.planning import estimate_memory_gb

    dims = int(model_cfg["spatial_dims"])
    est = estimate_memory_gb(list(patch), model_cfg, in_channels, out_channels, batch_size)
    return (f"model: {architecture(model_cfg)} {dims}D, ReLU only, channels {list(model_cfg['channels'])}, "
            f"{int(model_cfg.get('num_res_units', 0))} residual unit(s), {count_parameters(model):,} parameters, "
            f"receptive field {receptive_field(model_cfg)} voxels, patch {list(patch)} x batch {batch_size} "
            f"~{est:.2f} GB per training step")
