"""All metrics of one case, per region and per label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.data.labels import LabelSpec
from medseg.metrics.overlap import EmptyConvention, dice, iou, rates
from medseg.metrics.lesions import lesion_metrics
from medseg.metrics.lesions_brats2025 import lesion_metrics_brats2025
from medseg.metrics.surface import surface_metrics


def label_structure(code: int, name: str) -> str:
    """Name of the per-label structure, e.g. ``label1_edema`` (distinct from region names)."""
    return f"label{code}_" + name.replace(" ", "_").replace("-", "_")


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: LabelSpec,
                 percentile: float = 95.0, empty: EmptyConvention = EmptyConvention(),
                 nsd_tolerance_mm: float = 1.0, lesion_wise: bool = True,
                 lesion_convention: str = "brats2023") -> dict[str, dict[str, float | None]]:
    """Overlap, surface and volume metrics for every region and every foreground label.

    Args:
        pred: predicted internal label map.
        ref: reference internal label map, same grid.
        spacing: voxel spacing in mm, one per axis of the maps.
        labels: label names and regions.
        percentile: Hausdorff percentile (95 for HD95).
        empty: empty-mask convention.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        lesion_wise: add lesion-wise metrics (``lesion_*``) for the regions.
        lesion_convention: ``brats2023`` (:mod:`medseg.metrics.lesions`) or ``brats2025``
            (:mod:`medseg.metrics.lesions_brats2025`; an undefined value is ``None``, an infinite
            HD95 (nothing matched) is scored as the empty convention's HD).

    Returns:
        ``{structure: {"dice", "iou", "hd95", "msd", "nsd", "sensitivity", "specificity",
        "precision", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml"}}`` (rates may be
        ``None`` where undefined); structures are the region names followed by one
        ``label<code>_<name>`` per foreground label.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = [i for i, n in enumerate(pred.shape) if n > 1] or list(range(pred.ndim))
    if len(keep) < pred.ndim:  # single-slice images (X-rays) are scored in 2D
        pred = pred.reshape([pred.shape[i] for i in keep])
        ref = ref.reshape([ref.shape[i] for i in keep])
        spacing = [spacing[i] for i in keep]
    structures: dict[str, tuple[int, ...]] = dict(labels.regions)
    structures.update({label_structure(k, labels.labels[k]): (k,) for k in labels.foreground})
    out: dict[str, dict[str, float | None]] = {}
    for name, codes in structures.items():
        p, r = np.isin(pred, codes), np.isin(ref, codes)
        vp, vr = float(p.sum()) * voxel_ml, float(r.sum()) * voxel_ml
        out[name] = {
            "dice": dice(p, r, empty),
            "iou": iou(p, r, empty),
            **surface_metrics(p, r, spacing, percentile, nsd_tolerance_mm, empty),
            **rates(p, r),
            "volume_pred_ml": vp,
            "volume_ref_ml": vr,
            "volume_diff_ml": vp - vr,
        }
        if lesion_wise and name in labels.regions:
            out[name].update(lesion_scores(p, r, spacing, lesion_convention, empty))
    return out


def lesion_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], convention: str,
                  empty: EmptyConvention) -> dict[str, float | None]:
    """Lesion-wise metrics of one region under ``convention`` (``brats2023`` or ``brats2025``)."""
    if convention == "brats2023":
        return lesion_metrics(pred, ref, spacing)
    if convention != "brats2025":
        raise ValueError(f"evaluate.lesion_convention={convention!r}; expected brats2023 or brats2025")
    out: dict[str, float | None] = {}
    for key, value in lesion_metrics_brats2025(pred, ref, spacing).items():
        out[key] = None if np.isnan(value) else (empty.one_empty_hd if np.isinf(value) else value)
    return out
