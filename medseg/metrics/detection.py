"""Tumour detection, the radiologist's first question: is there a tumour, how many lesions, where.

Per case: the predicted tumour (the first region, e.g. whole tumour) split into 26-connected
lesions; each lesion's bounding box in world millimetres (RAS, the extreme voxel centres) and its
volume in total and per region. A case is called tumour-positive when its predicted tumour volume
reaches ``min_volume_ml``. Across cases: sensitivity and specificity of that call, and ROC AUC of a
continuous score (predicted tumour volume, or the maximum foreground probability), computed as the
Mann-Whitney statistic (ties count one half).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage


def detect(label: np.ndarray, affine: np.ndarray, regions: Mapping[str, Sequence[int]],
           min_volume_ml: float = 0.1) -> dict[str, Any]:
    """Lesions of the first region of a 3D internal label map, with world-mm boxes and volumes."""
    names = list(regions)
    tumour = np.isin(label, list(regions[names[0]]))
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    lab, n = ndimage.label(tumour, structure=ndimage.generate_binary_structure(label.ndim, label.ndim))
    lesions = []
    for i, box in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[box] == i
        lo = np.array([s.start for s in box], dtype=float)
        hi = np.array([s.stop - 1 for s in box], dtype=float)
        corners = np.array([[(hi if b else lo)[d] for d, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
        sub = label[box]
        lesions.append({
            "bbox_mm": [world.min(axis=0).round(2).tolist(), world.max(axis=0).round(2).tolist()],
            "volume_ml": float(comp.sum()) * voxel_ml,
            "volume_ml_per_region": {r: float(np.count_nonzero(comp & np.isin(sub, list(regions[r])))) * voxel_ml
                                     for r in names},
        })
    lesions.sort(key=lambda x: -x["volume_ml"])
    volume = float(tumour.sum()) * voxel_ml
    return {"tumour_present": volume >= min_volume_ml, "tumour_volume_ml": volume,
            "n_lesions": len(lesions), "lesions": lesions}


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); ``None`` without both classes."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def case_level(calls: Sequence[bool], truths: Sequence[bool]) -> dict[str, float | None]:
    """Sensitivity and specificity of tumour-present calls (``None`` when a class is absent)."""
    c, t = np.asarray(calls, bool), np.asarray(truths, bool)
    tp, fn = int((c & t).sum()), int((~c & t).sum())
    tn, fp = int((~c & ~t).sum()), int((c & ~t).sum())
    return {"sensitivity": tp / (tp + fn) if tp + fn else None,
            "specificity": tn / (tn + fp) if tn + fp else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def detection_summary(detections: Sequence[Mapping[str, Any]], per_case: Sequence[Mapping[str, Any]],
                      regions: Mapping[str, Sequence[int]], min_ml: float) -> dict[str, Any]:
    """``detections.json``: per-case lesions with boxes, and case- and lesion-level detection rates.

    Args:
        detections: per case, :func:`detect` of the prediction plus ``case``,
            ``max_foreground_prob`` (or ``None``) and ``reference_tumour_present``.
        per_case: the scored cases' metrics (:func:`medseg.metrics.case.case_metrics`), whose
            lesion counts of the first region give the lesion-level rates.
        regions: region name -> internal codes; the first region is the tumour.
        min_ml: predicted volume from which a case is called tumour-positive.
    """
    truths = [d["reference_tumour_present"] for d in detections]
    first = next(iter(regions))
    tp, fp, fn = (sum(c[first].get(f"lesion_{k}", 0) for c in per_case) for k in ("tp", "fp", "fn"))
    probs = [d["max_foreground_prob"] for d in detections]
    return {
        "convention": {"tumour": f"region {first} {list(regions[first])}",
                       "tumour_present": f"predicted tumour volume >= {min_ml:g} ml",
                       "bbox_mm": "RAS world mm of the extreme voxel centres [[R, A, S] min, [R, A, S] max]",
                       "lesions": "26-connected components of the predicted tumour, largest first"},
        "case_level": {**case_level([d["tumour_present"] for d in detections], truths),
                       "roc_auc_volume": roc_auc([d["tumour_volume_ml"] for d in detections], truths),
                       "roc_auc_max_probability": (roc_auc(probs, truths) if all(p is not None for p in probs)
                                                   else None)},
        "lesion_level": {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else None,
                         "recall": tp / (tp + fn) if tp + fn else None},
        "cases": list(detections),
    }
