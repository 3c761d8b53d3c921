"""All metrics of one case, per region and per label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.data.labels import LabelSpec
from medseg.metrics.overlap import EmptyConvention, dice, iou, rates
from medseg.metrics.lesions import lesion_metrics
from medseg.metrics.surface import surface_metrics


def label_structure(code: int, name: str) -> str:
    """Name of the per-label structure, e.g. ``label1_edema`` (distinct from region names)."""
    return f"label{code}_" + name.replace(" ", "_").replace("-", "_")


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: LabelSpec,
                 percentile: float = 95.0, empty: EmptyConvention = EmptyConvention(),
                 nsd_tolerance_mm: float = 1.0, lesion_wise: bool = True) -> dict[str, dict[str, float | None]]:
    """Overlap, surface and volume metrics for every region and every foreground label.

    Args:
        pred: predicted internal label map.
        ref: reference internal label map, same grid.
        spacing: voxel spacing in mm, one per axis of the maps.
        labels: label names and regions.
        percentile: Hausdorff percentile (95 for HD95).
        empty: empty-mask convention.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        lesion_wise: add BraTS 2023 lesion-wise metrics (``lesion_*``) for the regions.

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
            out[name].update(lesion_metrics(p, r, spacing))
    return out
