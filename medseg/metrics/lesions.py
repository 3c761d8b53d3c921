"""Lesion-wise metrics following the BraTS 2023 rules.

1. Reference lesions are the 26-connected components of the reference mask after dilating it by
   ``dilation`` voxels (so lesions closer than that count as one); each lesion keeps only its
   original reference voxels. Lesions smaller than ``min_lesion_ml`` are ignored (neither scored
   nor counted, and predictions touching only them are not false positives).
2. Predicted lesions are the 26-connected components of the prediction. A reference lesion is
   detected (TP) when predicted components overlap its dilated region; its Dice and HD95 are
   computed against the union of those components. An undetected reference lesion (FN) and every
   predicted component that overlaps no reference lesion region (FP) score Dice 0 and HD95
   ``missed_hd_mm`` (374 mm in BraTS 2023).
3. Lesion-wise Dice / HD95 = the mean over all TP, FN and FP entries; with no reference lesion and
   no FP: Dice 1, HD95 0. Detection F1 = 2 TP / (2 TP + FP + FN) (1 when all are zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.metrics.overlap import dice
from medseg.metrics.surface import hausdorff


def lesion_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], dilation: int = 3,
                   min_lesion_ml: float = 0.05, missed_hd_mm: float = 374.0) -> dict[str, float]:
    """Lesion-wise Dice and HD95, lesion counts and detection F1 (see the module docstring)."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    full = ndimage.generate_binary_structure(r.ndim, r.ndim)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    dilated = ndimage.binary_dilation(r, structure=full, iterations=dilation) if dilation > 0 else r
    regions, n_regions = ndimage.label(dilated, structure=full)
    pred_lab, n_pred = ndimage.label(p, structure=full)
    dices: list[float] = []
    hds: list[float] = []
    tp = fn = 0
    claimed: set[int] = set()
    for i in range(1, n_regions + 1):
        region = regions == i
        lesion = r & region
        touching = set(np.unique(pred_lab[region]).tolist()) - {0}
        claimed |= touching
        if lesion.sum() * voxel_ml < min_lesion_ml:
            continue  # too small to score
        if not touching:
            fn += 1
            dices.append(0.0)
            hds.append(missed_hd_mm)
            continue
        tp += 1
        matched = np.isin(pred_lab, list(touching))
        dices.append(dice(matched, lesion))
        hds.append(hausdorff(matched, lesion, spacing, 95.0))
    fp = len(set(range(1, n_pred + 1)) - claimed)
    dices += [0.0] * fp
    hds += [missed_hd_mm] * fp
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"lesion_dice": float(np.mean(dices)) if dices else 1.0,
            "lesion_hd95": float(np.mean(hds)) if hds else 0.0,
            "lesion_tp": float(tp), "lesion_fp": float(fp), "lesion_fn": float(fn), "lesion_f1": float(f1)}
