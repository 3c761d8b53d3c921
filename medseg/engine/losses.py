"""Segmentation losses: a Dice term plus a voxel-wise term, for label-wise or region-wise targets.

=============== =================================== =====================================
``train.loss``  labels (softmax)                    regions (sigmoid)
=============== =================================== =====================================
``dice_ce``     Dice (foreground) + cross-entropy   Dice (every region) + binary CE
``dice_focal``  Dice (foreground) + softmax focal   Dice (every region) + sigmoid focal
=============== =================================== =====================================

Dice is computed over the whole batch (``batch=True``), as nnU-Net does, so that patches without
foreground do not produce undefined per-sample Dice. MONAI provides the Dice and focal terms; its
``DiceCELoss`` is not used for regions because it applies a softmax cross-entropy to multi-channel
sigmoid outputs.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from medseg.engine.targets import Target
from medseg.errors import ConfigError

LOSSES = ("dice_ce", "dice_focal")


class SegmentationLoss(nn.Module):
    """Weighted sum of a Dice loss and a voxel-wise loss.

    Args:
        target: label-wise or region-wise target.
        kind: ``dice_ce`` or ``dice_focal``.
        dice_weight: weight of the Dice term.
        voxel_weight: weight of the cross-entropy or focal term.
        focal_gamma: focusing parameter of the focal term.
    """

    def __init__(self, target: Target, kind: str = "dice_ce", dice_weight: float = 1.0,
                 voxel_weight: float = 1.0, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ConfigError(f"train.loss={kind!r} is not known; valid: {list(LOSSES)}")
        self.target = target
        self.kind = kind
        self.dice_weight = float(dice_weight)
        self.voxel_weight = float(voxel_weight)
        regions = target.mode == "regions"
        self.dice = DiceLoss(include_background=regions, to_onehot_y=not regions, softmax=not regions,
                             sigmoid=regions, batch=True)
        if kind == "dice_focal":
            self.voxel: nn.Module = FocalLoss(include_background=True, to_onehot_y=not regions, gamma=focal_gamma,
                                              use_softmax=not regions)
        else:
            self.voxel = nn.BCEWithLogitsLoss() if regions else nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, K, ...)`` logits against a ``(B, 1, ...)`` internal label map.

        Deep-supervision outputs ``(B, S, K, ...)`` (full resolution first) are weighted
        ``1, 1/2, 1/4, ...`` (normalised to sum to 1), as nnU-Net weights its outputs.
        """
        if logits.dim() == label.dim() + 1:
            weights = [0.5**i for i in range(logits.shape[1])]
            total = sum(weights)
            return sum(w / total * self._single(logits[:, i], label) for i, w in enumerate(weights))
        return self._single(logits, label)

    def _single(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        encoded = self.target.encode(label)
        dice = self.dice(logits, encoded)
        if isinstance(self.voxel, nn.CrossEntropyLoss):
            voxel = self.voxel(logits, label[:, 0].long())
        else:
            voxel = self.voxel(logits, encoded)
        return self.dice_weight * dice + self.voxel_weight * voxel
