"""The ReLU U-Net.

MONAI's ``UNet`` defaults to a parametric ReLU; medseg always builds it with ``act="RELU"`` and offers no
activation option. :func:`activation_types` lists the activation modules a network contains so
that tests (and ``train`` at start-up) can prove that ReLU is the only one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from monai.networks.nets import UNet
from torch import nn

from medseg.config import ModelConfig, Norm, choice
from medseg.errors import ConfigError

#: A model config: the typed schema, or a plain mapping (as stored in checkpoint metadata).
ModelSpec = Union[ModelConfig, Mapping[str, Any]]

_ACTIVATION_BASES: tuple[type[nn.Module], ...] = tuple(
    getattr(nn.modules.activation, n) for n in nn.modules.activation.__all__
    if n not in {"MultiheadAttention"}
)


def as_model_config(model: ModelSpec) -> ModelConfig:
    """The model config as :class:`~medseg.config.ModelConfig`.

    A mapping (e.g. read back from a checkpoint) is converted: keys it lacks take the schema's
    defaults, unknown keys are ignored.

    Raises:
        ConfigError: when ``norm`` is not known.
    """
    if isinstance(model, ModelConfig):
        return model
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in model.items() if k in known})
    norm = choice(cfg.norm).lower()
    if norm not in Norm.__members__:
        raise ConfigError(f"model.norm={norm!r} is not known; valid: {sorted(Norm.__members__)}")
    return ModelConfig(spatial_dims=int(cfg.spatial_dims), channels=[int(c) for c in cfg.channels],
                       strides=[int(v) for v in cfg.strides], num_res_units=int(cfg.num_res_units),
                       norm=Norm(norm), dropout=float(cfg.dropout), deep_supervision=bool(cfg.deep_supervision),
                       deep_supr_num=int(cfg.deep_supr_num))


def model_to_dict(model: ModelSpec) -> dict[str, Any]:
    """The model config as plain JSON-ready data (what checkpoints and artifacts record)."""
    cfg = as_model_config(model)
    return {**dataclasses.asdict(cfg), "norm": choice(cfg.norm)}


def build_unet(model_cfg: ModelSpec, in_channels: int, out_channels: int,
               inference: bool = False) -> nn.Module:
    """Build a MONAI U-Net whose every activation is ReLU.

    With ``deep_supervision`` the network is MONAI's ``DynUNet`` (nnU-Net's architecture: two
    3-wide convolutions per level, strided downsampling, transposed-convolution upsampling) with
    ReLU, whose training output stacks the full-resolution output and ``deep_supr_num`` upsampled
    lower-level outputs as ``(B, 1 + deep_supr_num, K, ...)``; in eval mode, and when built with
    ``inference=True`` (for export: same weights minus the supervision heads), it returns the
    full-resolution output only. Otherwise it is MONAI's ``UNet``.

    Args:
        model_cfg: a :class:`medseg.config.ModelConfig` or the same keys as a mapping.
        in_channels: number of input image channels.
        out_channels: number of output channels.
        inference: build without deep-supervision heads.

    Raises:
        ConfigError: on inconsistent channel/stride lists or unknown norm.
    """
    cfg = as_model_config(model_cfg)
    channels, strides = list(cfg.channels), list(cfg.strides)
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise ConfigError(f"model.channels needs >= 2 levels and model.strides one entry fewer; "
                          f"got channels={channels}, strides={strides}")
    if cfg.spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
    norm_arg: Any = ("INSTANCE", {"affine": True}) if choice(cfg.norm) == "instance" else "BATCH"
    if cfg.deep_supervision:
        return _dyn_unet(cfg, in_channels, out_channels, norm_arg, inference)
    return UNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=channels, strides=strides, num_res_units=cfg.num_res_units, act="RELU",
                norm=norm_arg, dropout=cfg.dropout)


def _dyn_unet(cfg: ModelConfig, in_channels: int, out_channels: int, norm_arg: Any, inference: bool) -> nn.Module:
    """MONAI's ``DynUNet`` with ReLU and deep supervision (heads dropped when ``inference``)."""
    from monai.networks.nets import DynUNet

    levels, strides = len(cfg.channels), list(cfg.strides)
    if not 1 <= cfg.deep_supr_num <= len(strides) - 1:
        raise ConfigError(f"model.deep_supr_num={cfg.deep_supr_num} must be in 1..{len(strides) - 1} "
                          f"for {levels} levels")
    return DynUNet(spatial_dims=cfg.spatial_dims, in_channels=in_channels, out_channels=out_channels,
                   kernel_size=[3] * levels, strides=[1, *strides], upsample_kernel_size=strides,
                   filters=list(cfg.channels), dropout=cfg.dropout or None, norm_name=norm_arg,
                   act_name="RELU", deep_supervision=not inference, deep_supr_num=cfg.deep_supr_num,
                   res_block=cfg.num_res_units > 0)


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


def build_model(model_cfg: ModelSpec, in_channels: int, out_channels: int,
                inference: bool = False) -> nn.Module:
    """The network used on volumes: the 3D U-Net, or the 2D U-Net applied slice-wise.

    Both take and return ``(B, C, X, Y, Z)`` tensors, so patch sampling, sliding windows and the
    exported artifact are the same for 2D and 3D models (a 2D model's patch ends in 1).
    ``inference=True`` drops deep-supervision heads (load weights with :func:`load_weights`).

    Args:
        model_cfg: a :class:`medseg.config.ModelConfig` or the same keys as a mapping (checkpoint
            metadata).
        in_channels: number of input image channels.
        out_channels: number of output channels.
        inference: build without deep-supervision heads.
    """
    cfg = as_model_config(model_cfg)
    net = build_unet(cfg, in_channels, out_channels, inference)
    return Slicewise(net) if cfg.spatial_dims == 2 else net


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load trained weights; deep-supervision heads (absent from an inference model) are skipped.

    Raises:
        ConfigError: when the weights do not fit ``model`` (missing, unexpected or resized tensors).
    """
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as e:  # tensors of another shape
        raise ConfigError(f"checkpoint does not match the model: {' '.join(str(e).split())[:300]}") from e
    unexpected = [k for k in result.unexpected_keys if "deep_supervision_heads" not in k and "super_head" not in k]
    if result.missing_keys or unexpected:
        raise ConfigError(f"checkpoint does not match the model: missing {result.missing_keys[:5]}, "
                          f"unexpected {unexpected[:5]}")


def volume_patch(model_cfg: ModelSpec, patch: Sequence[int]) -> list[int]:
    """The 3D patch a model trains on: ``patch + [1]`` for a 2D model."""
    patch = [int(p) for p in patch]
    dims = as_model_config(model_cfg).spatial_dims
    if len(patch) != dims:
        raise ConfigError(f"train.patch_size={patch} must have {dims} entries for model.spatial_dims={dims}")
    return patch + [1] if dims == 2 else patch


def activation_types(model: nn.Module) -> set[type[nn.Module]]:
    """Return the classes of every activation module inside ``model``."""
    return {type(m) for m in model.modules() if isinstance(m, _ACTIVATION_BASES)}


def check_relu_only(model: nn.Module) -> None:
    """Raise ``ConfigError`` if ``model`` holds any activation other than ReLU."""
    others = {t.__name__ for t in activation_types(model)} - {"ReLU"}
    if others:
        raise ConfigError(f"the U-Net must use ReLU only, found {sorted(others)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def architecture(model_cfg: ModelSpec) -> str:
    """Name of the network class the config builds."""
    return "MONAI DynUNet (deep supervision)" if as_model_config(model_cfg).deep_supervision else "MONAI UNet"


def receptive_field(model_cfg: ModelSpec) -> int:
    """Theoretical receptive field (voxels along one axis) of MONAI's U-Net with 3-wide kernels.

    Encoder: per level one strided convolution (plus one more per residual unit); bottom level the
    same without stride; decoder: a strided transposed convolution per level (plus one more
    convolution per residual unit). Each convolution widens the field by ``2 x`` the current jump.
    """
    cfg = as_model_config(model_cfg)
    strides = list(cfg.strides)
    extra = cfg.num_res_units
    if cfg.deep_supervision:  # DynUNet: two convolutions per level (three in a residual block)
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


def describe_model(model: nn.Module, model_cfg: ModelSpec, patch: Sequence[int], batch_size: int,
                   memory_gb: float) -> str:
    """One line: architecture, parameters, receptive field and the memory estimate ``memory_gb``
    (GB of one training step on ``patch``)."""
    cfg = as_model_config(model_cfg)
    return (f"model: {architecture(cfg)} {cfg.spatial_dims}D, ReLU only, channels {list(cfg.channels)}, "
            f"{cfg.num_res_units} residual unit(s), {count_parameters(model):,} parameters, "
            f"receptive field {receptive_field(cfg)} voxels, patch {list(patch)} x batch {batch_size} "
            f"~{memory_gb:.2f} GB per training step")
