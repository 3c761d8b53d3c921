"""Validation during training: mean Dice per region over whole preprocessed volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from medseg.data.dataset import CachedCase
from medseg.inference.precision import autocast
from medseg.inference.predictor import remove_small_components
from medseg.inference.sliding_window import sliding_window_probs
from medseg.inference.targets import Target
from medseg.metrics.overlap import dice


def validate(model: nn.Module, cases: Sequence[CachedCase], target: Target, roi: Sequence[int], overlap: float,
             device: torch.device, dtype: torch.dtype | None = None, spacing: Sequence[float] | None = None,
             min_component_ml: float = 0.0) -> dict[str, float]:
    """Mean Dice per region over whole preprocessed validation volumes, after the post-processing
    the exported model applies (tumour components under ``min_component_ml`` removed), so that the
    best checkpoint is the best of what ``evaluate`` and ``predict`` will report: a few stray voxels
    on a tumour-free validation case would otherwise flip its region Dice between 1 and 0 (the
    empty-mask convention) and move the mean by a sixth with four validation cases.

    Args:
        model: the network (put in eval mode for the call, then back).
        cases: cached validation cases (image ``(C, X, Y, Z)``, label ``(X, Y, Z)``).
        target: how network outputs decode to labels.
        roi: sliding-window size (the training patch).
        overlap: sliding-window overlap.
        device: where the network runs.
        dtype: autocast dtype, as in training (``None``: full precision).
        spacing: the preprocessed grid's voxel spacing in mm (the plan's target spacing).
        min_component_ml: smallest tumour component kept (ml); 0 or no ``spacing``: all kept.

    Returns:
        Region name -> mean Dice (NaN without cases).
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {r: [] for r in target.labels.regions}

    def net(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(x.to(device)).float().cpu()

    for case in cases:
        probs = sliding_window_probs(net, torch.from_numpy(np.array(case.image)), roi, target.channels,
                                     overlap=overlap, batch_size=2, activation=target.activation)
        pred = target.decode(probs)
        if min_component_ml > 0 and spacing is not None:
            pred = remove_small_components(pred, [*spacing, 1.0, 1.0][:pred.ndim], min_component_ml)
        ref = np.asarray(case.label)
        for region, codes in target.labels.regions.items():
            scores[region].append(dice(np.isin(pred, codes), np.isin(ref, codes)))
    model.train(was_training)
    return {r: float(np.mean(v)) if v else float("nan") for r, v in scores.items()}
