"""What the network predicts, and how its outputs become a label map.

Two target modes, chosen by ``train.target``:

- ``labels``: one channel per internal label (background included), softmax across channels,
  label = argmax. Cross-entropy and Dice over the foreground labels.
- ``regions``: one channel per region (BraTS: whole tumour, tumour core, enhancing tumour),
  an independent sigmoid per channel, as the winning BraTS entries train. A voxel's label is the
  code that distinguishes the innermost region it belongs to (probability > 0.5): outside whole
  tumour 0; in whole tumour but not core 1 (edema); in core but not enhancing 2; in enhancing 3.
  Regions must nest (each one a subset of the one before), which :meth:`Target.decode` relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.data.labels import LabelSpec
from medseg.data.preprocess import channel_argmax
from medseg.errors import ConfigError

TARGET_MODES = ("labels", "regions")


@dataclass(frozen=True)
class Target:
    """The output of a model: mode plus the label set it encodes."""

    mode: str
    labels: LabelSpec

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise ConfigError(f"train.target={self.mode!r} is not known; valid: {list(TARGET_MODES)}")
        if self.mode == "regions":
            sets = [set(v) for v in self.labels.regions.values()]
            if any(not inner <= outer for outer, inner in zip(sets, sets[1:])):
                raise ConfigError(f"train.target=regions needs nested regions (each inside the one before); "
                                  f"got {dict(self.labels.regions)}")

    @property
    def channels(self) -> int:
        """Number of output channels of the network."""
        return self.labels.num_classes if self.mode == "labels" else len(self.labels.regions)

    @property
    def activation(self) -> str:
        """``softmax`` across channels or ``sigmoid`` per channel."""
        return "softmax" if self.mode == "labels" else "sigmoid"

    def probabilities(self, logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Logits -> probabilities."""
        return torch.softmax(logits, dim=dim) if self.mode == "labels" else torch.sigmoid(logits)

    def encode(self, label: torch.Tensor) -> torch.Tensor:
        """Training target from a ``(B, 1, ...)`` label map: the map itself (labels) or ``(B, R, ...)``
        float region masks (regions)."""
        if self.mode == "labels":
            return label
        lab = label[:, 0]
        out = torch.zeros((lab.shape[0], len(self.labels.regions), *lab.shape[1:]), dtype=torch.float32,
                          device=label.device)
        for r, codes in enumerate(self.labels.regions.values()):
            for c in codes:  # a few comparisons of small integers: far cheaper than torch.isin
                out[:, r] += lab == c
        return out

    def decode(self, probs: torch.Tensor) -> np.ndarray:
        """``(K, ...)`` probabilities -> uint8 label map in internal codes."""
        if self.mode == "labels":
            return channel_argmax(probs).numpy()
        out = torch.zeros(probs.shape[1:], dtype=torch.uint8)
        for r, codes in enumerate(self.labels.regions.values()):
            out[probs[r] > 0.5] = min(codes)
        return out.numpy()

    def foreground_score(self, probs: torch.Tensor) -> float:
        """Highest probability of any tumour voxel (a case-level detection score)."""
        if self.mode == "labels":
            return float(probs[1:].max()) if probs.shape[0] > 1 else 0.0
        return float(probs[0].max())

    def to_json(self) -> dict:
        """JSON-ready description (stored in checkpoints and artifacts)."""
        return {"mode": self.mode, "activation": self.activation, "channels": self.channels,
                **self.labels.to_json()}

    @classmethod
    def from_json(cls, obj: Mapping) -> Target:
        """Inverse of :meth:`to_json`; older artifacts without ``mode`` are label-wise."""
        return cls(mode=str(obj.get("mode", "labels")), labels=LabelSpec.from_json(obj))

    @classmethod
    def from_checkpoint(cls, meta: Any) -> Target:
        """The target a checkpoint was trained for, from its metadata (a
        :class:`~medseg.models.checkpoint.CheckpointMeta`); label-wise with the plan's labels for
        checkpoints that do not record one."""
        return cls.from_json(meta.target or meta.plan["labels"])
