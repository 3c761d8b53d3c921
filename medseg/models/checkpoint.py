"""Checkpoints: model weights plus the metadata that rebuilds the network.

On disk a checkpoint is ``{"model": state_dict, "meta": plain dict}`` written with ``torch.save``
(loadable with ``weights_only=True``: only tensors and plain data, no pickled code). The metadata is
:class:`CheckpointMeta`; ``meta["model"]`` is the model config as a plain dict, so that a checkpoint
is readable without medseg's config classes.

>>> meta = CheckpointMeta(plan={}, model={"spatial_dims": 3}, patch_size=[32, 32, 32], target={},
...                       in_channels=4, num_classes=4)
>>> CheckpointMeta.from_json(meta.to_json()) == meta
True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError, DataError
from medseg.models.unet import build_model, check_relu_only, load_weights
from medseg.utils.files import atomic_path

#: Keys every checkpoint's metadata must hold to rebuild its network.
_REQUIRED = ("model", "patch_size", "in_channels", "num_classes")


@dataclass
class CheckpointMeta:
    """What a checkpoint records besides its weights.

    Attributes:
        plan: the prepare stage's ``plan.json`` (preprocessing, labels, ...).
        model: the model config as a plain dict (see :class:`medseg.config.ModelConfig`).
        patch_size: the 3D training patch (ends in 1 for a 2D model).
        target: :meth:`medseg.inference.targets.Target.to_json` (empty in very old checkpoints).
        in_channels: number of image channels.
        num_classes: number of network output channels.
        fold: cross-validation fold, or ``None`` for the prepared split.
        validation_cases: names of the cases validated on.
        epoch: epoch the weights were saved after (``None`` when unknown).
        iteration: iterations done when they were saved.
        val: validation Dice per region at that epoch, when validated.
        best_metric: the validation score of the epoch ``best.pt`` holds (``best.pt`` only).
        accepted_subsets: the channel subsets the network was trained to accept (channel dropout,
            see :func:`medseg.data.augment.accepted_subsets`); empty in checkpoints written before
            it was recorded (only the full set).
    """

    plan: dict[str, Any]
    model: dict[str, Any]
    patch_size: list[int]
    target: dict[str, Any]
    in_channels: int
    num_classes: int
    fold: int | None = None
    validation_cases: list[str] = field(default_factory=list)
    epoch: int | None = None
    iteration: int | None = None
    val: dict[str, float] | None = None
    best_metric: float | None = None
    accepted_subsets: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metadata as plain JSON-ready data (what is stored under ``"meta"``)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """Read what :meth:`to_json` wrote; unknown keys are ignored.

        Raises:
            ConfigError: when a key needed to rebuild the network is missing.
        """
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ConfigError(f"checkpoint metadata lacks {missing}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("plan", {})
        values["target"] = dict(values.get("target") or {})
        values["validation_cases"] = list(values.get("validation_cases") or [])
        values["patch_size"] = [int(p) for p in values["patch_size"]]
        values["in_channels"], values["num_classes"] = int(values["in_channels"]), int(values["num_classes"])
        return cls(**values)


def save_checkpoint(path: Path, model: nn.Module | Mapping[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Write weights (a module or its state dict) and ``meta`` to ``path`` atomically.

    Args:
        path: the ``.pt`` file to write; a crash mid-write leaves the previous file in place.
        model: the network or its state dict.
        meta: the checkpoint's metadata.
    """
    weights = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    with atomic_path(path) as tmp:
        torch.save({"model": weights, "meta": meta.to_json()}, tmp)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        DataError: naming the file when it is missing, unreadable or not a medseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise DataError(path, f"not a readable medseg checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise DataError(path, "not a medseg checkpoint (keys 'model' and 'meta' missing)")
    try:
        meta = CheckpointMeta.from_json(ckpt["meta"])
    except (ConfigError, TypeError, ValueError) as e:
        raise DataError(path, f"invalid checkpoint metadata ({e})") from e
    return ckpt["model"], meta


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a checkpoint's network for inference (no deep-supervision heads), in eval mode.

    Raises:
        DataError: when the file is not a usable checkpoint or its weights do not fit its model.
        ConfigError: when the network holds an activation other than ReLU.
    """
    weights, meta = load_checkpoint(path)
    model = build_model(meta.model, meta.in_channels, meta.num_classes, inference=True)
    try:
        load_weights(model, weights)
    except ConfigError as e:
        raise DataError(path, str(e)) from e
    check_relu_only(model)
    return model.to(device).eval(), meta
