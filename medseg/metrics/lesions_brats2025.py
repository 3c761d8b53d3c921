"""Lesion-wise metrics following the BraTS 2025 rules (``brats-evaluation``, built on panoptica).

Read from ``brats-evaluation`` 0.0.10 (its per-task configs ``gli``, ``mets``, ``ped``, ``MenPre``,
``MenRT``, ``GoAT``) and panoptica 2.1:

1. Lesions are the 26-connected components of the prediction and of the reference (panoptica's
   ``ConnectedComponentsInstanceApproximator``; cc3d numbers them in C scan order, as
   :func:`scipy.ndimage.label` does). No dilation and no minimum lesion size: every task's config
   uses the same instance approximation and matching; the tasks differ only in their label groups
   (:data:`medseg.data.labels.BRATS_EVALUATION_TASKS`).
2. Matching is one-to-one (``MaxBipartiteMatching`` on Dice, threshold 1e-6): a cost matrix of
   ``1 - Dice`` for overlapping pairs with Dice >= 1e-6 and ``1 + 1e-6`` elsewhere, solved with
   :func:`scipy.optimize.linear_sum_assignment`; a pair is a match (TP) when its cost is below 1.
   Unmatched reference lesions are FN, unmatched predicted lesions FP.
3. Each matched pair scores Dice, HD95 (95th percentile of the pooled surface distances, borders by
   a face-connected erosion, Euclidean distance with the voxel spacing) and NSD (tolerance: the
   smallest voxel spacing), with the spacing of each array axis.

Spacing caveat: given file paths, panoptica reads them with SimpleITK when it is installed, which
returns the array in (z, y, x) order but the spacing in (x, y, z) order, so on anisotropic grids its
surface metrics use permuted spacings. medseg applies each axis' own spacing; the results agree
with brats-evaluation on isotropic grids (BraTS' own data: 1 mm) and with panoptica given arrays
and their spacing on any grid (both checked in ``tests/test_lesions_brats2025.py``).
4. Lesion-wise Dice / HD95 / NSD = the mean over the matched pairs only (panoptica's ``sq_dsc``,
   ``sq_hd95``, ``sq_nsd``). With no match: Dice and NSD 0, HD95 infinite; NaN for all three when
   neither mask holds a lesion. Detection F1 = panoptica's ``rq`` = TP / (TP + (FP + FN) / 2).

``lesion_hd95`` is ``inf`` when nothing matched (as brats-evaluation reports it); aggregation skips
undefined (NaN) values.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

#: panoptica's matching threshold on Dice in brats-evaluation's configs.
MATCHING_THRESHOLD = 1e-6


def lesion_metrics_brats2025(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Lesion-wise Dice, HD95 and NSD, lesion counts and detection F1 (see the module docstring)."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    full = ndimage.generate_binary_structure(r.ndim, r.ndim)
    pred_lab, n_pred = ndimage.label(p, structure=full)
    ref_lab, n_ref = ndimage.label(r, structure=full)
    pairs = match_lesions(pred_lab, n_pred, ref_lab, n_ref)
    scores = [pair_scores(pred_lab == j, ref_lab == i, spacing) for i, j in pairs]
    tp = len(pairs)
    fp, fn = n_pred - tp, n_ref - tp
    if tp:
        dsc, hd95, nsd = (float(np.mean([s[k] for s in scores])) for k in range(3))
    elif n_pred + n_ref == 0:
        dsc = hd95 = nsd = float("nan")
    else:
        dsc, hd95, nsd = 0.0, float("inf"), 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else float("nan")
    return {"lesion_dice": dsc, "lesion_hd95": hd95, "lesion_nsd": nsd, "lesion_tp": float(tp),
            "lesion_fp": float(fp), "lesion_fn": float(fn), "lesion_f1": float(rq)}


def match_lesions(pred_lab: np.ndarray, n_pred: int, ref_lab: np.ndarray, n_ref: int) -> list[tuple[int, int]]:
    """One-to-one matching maximising the summed Dice of overlapping lesions.

    Returns:
        ``(reference lesion, predicted lesion)`` label pairs, in reference order.
    """
    if not n_pred or not n_ref:
        return []
    both = (pred_lab > 0) & (ref_lab > 0)
    pair_ids, overlap = np.unique(np.stack([ref_lab[both], pred_lab[both]]), axis=1, return_counts=True)
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    for (i, j), inter in zip(pair_ids.T.tolist(), overlap.tolist()):
        score = 2.0 * inter / (ref_sizes[i] + pred_sizes[j])
        if score >= MATCHING_THRESHOLD:
            cost[i - 1, j - 1] = 1.0 - score
    rows, cols = linear_sum_assignment(cost)
    return [(int(i) + 1, int(j) + 1) for i, j in zip(rows, cols) if cost[i, j] < 1.0]


def pair_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Dice, HD95 (mm) and NSD of one matched pair of lesion masks, within their padded bounding box."""
    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(box, pred.shape))
    p, r = pred[box], ref[box]
    dsc = 2.0 * np.count_nonzero(p & r) / (np.count_nonzero(p) + np.count_nonzero(r))
    face = ndimage.generate_binary_structure(p.ndim, 1)
    p_border = p ^ ndimage.binary_erosion(p, structure=face)
    r_border = r ^ ndimage.binary_erosion(r, structure=face)
    sampling = np.asarray(spacing, dtype=np.float64)
    d_ref = ndimage.distance_transform_edt(~p_border, sampling=sampling)[r_border]
    d_pred = ndimage.distance_transform_edt(~r_border, sampling=sampling)[p_border]
    hd95 = float(np.percentile(np.hstack((d_ref, d_pred)), 95))
    tol = float(np.min(sampling))
    hits = np.sum(d_ref <= tol) / d_ref.size + np.sum(d_pred <= tol) / d_pred.size
    misses = np.sum(d_ref > tol) / d_ref.size + np.sum(d_pred > tol) / d_pred.size
    nsd = float(hits / (hits + misses + sys.float_info.min))
    return float(dsc), hd95, nsd
