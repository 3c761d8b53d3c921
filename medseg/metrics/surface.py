"""Surface distances in millimetres, honouring anisotropic voxel spacing.

Surface voxels of a mask are its voxels with at least one 6-neighbour outside the mask (voxels on
the array border count as surface). ``d(A -> B)`` is, for each surface voxel of A, the Euclidean
distance in mm to the nearest surface voxel of B.

Mean surface distance (MSD, the average symmetric surface distance) is the mean of both sets of
directed distances pooled, ``(sum d(P -> R) + sum d(R -> P)) / (|S_P| + |S_R|)`` (MedPy's ``assd``).
Normalised surface Dice at tolerance ``t`` mm (Nikolov et al. 2021, voxel-surface form) is the
share of both surfaces' voxels lying within ``t`` of the other surface. Both follow the Dice
values of the empty-mask convention (both empty: 1 / 0 mm; one empty: 0 / the empty HD).

HD95 is ``max(P95(d(P -> R)), P95(d(R -> P)))`` — the maximum of the two *directed* 95th
percentiles, as in the BraTS evaluation and MONAI's ``compute_hausdorff_distance``; MedPy's
``hd95`` instead pools both directions before taking the percentile. Percentiles use linear
interpolation (numpy's default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.data.geometry import foreground_box
from medseg.metrics.overlap import EmptyConvention


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from the surface of ``a`` to that of ``b`` and back; both masks non-empty."""
    box = foreground_box(a | b, margin=1)
    a, b = a[box], b[box]
    sa, sb = _surface(a), _surface(b)
    dt_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return dt_b[sa], dt_a[sb]


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float = 95.0,
              empty: EmptyConvention = EmptyConvention()) -> float | None:
    """Percentile Hausdorff distance in mm (``percentile=100`` gives the classic Hausdorff)."""
    return surface_metrics(pred, ref, spacing, percentile, empty=empty)["hd95"]


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float = 95.0,
                    tolerance_mm: float = 1.0, empty: EmptyConvention = EmptyConvention()) -> dict[str, float | None]:
    """HD (at ``percentile``, key ``hd95``), mean surface distance and normalised surface Dice from
    one distance pass."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match {p.ndim}D masks")
    ep, er = not p.any(), not r.any()
    if ep and er:
        return {"hd95": empty.both_empty_hd, "msd": empty.both_empty_hd, "nsd": empty.both_empty_dice}
    if ep or er:
        return {"hd95": empty.one_empty_hd, "msd": empty.one_empty_hd, "nsd": empty.one_empty_dice}
    d_pr, d_rp = directed_distances(p, r, spacing)
    return {
        "hd95": float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile))),
        "msd": float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
        "nsd": float((np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm))
                     / (d_pr.size + d_rp.size)),
    }
