"""Metrics against MedPy and MONAI (independent implementations) and hand-computed cases.

Agreement to 1e-6: Dice (``dc``), IoU (``jc``), sensitivity, specificity, precision, Hausdorff
(100th percentile, ``hd``) and mean surface distance (``assd``: the mean of both directions'
distances pooled). HD95 differs by definition: MedPy pools both directions before taking the percentile,
medseg (like BraTS and MONAI) takes the larger of the two directed percentiles, which is never
smaller than the pooled one (checked). MedPy raises on empty masks; those cases are hand-computed.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.overlap import EmptyConvention, dice, iou, rates
from medseg.metrics.surface import hausdorff, surface_metrics

binary = pytest.importorskip("medpy.metric.binary")


def _ball(shape, centre, r):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r**2


def _cases():
    shape = (40, 36, 30)
    a = _ball(shape, (20, 18, 15), 8)
    several = _ball(shape, (10, 10, 10), 4) | _ball(shape, (28, 25, 20), 5) | _ball(shape, (30, 8, 8), 3)
    missed_one = _ball(shape, (10, 10, 10), 4) | _ball(shape, (28, 25, 20), 5)
    one_voxel = np.zeros(shape, bool)
    one_voxel[5, 6, 7] = True
    near = np.zeros(shape, bool)
    near[5, 6, 8] = True
    return {
        "perfect": (a, a, (1.0, 1.0, 1.0)),
        "partial": (a, _ball(shape, (23, 18, 15), 8), (1.0, 1.0, 1.0)),
        "shift": (a, np.roll(a, 4, axis=1), (1.0, 1.0, 1.0)),
        "one-voxel": (one_voxel, near, (1.0, 1.0, 1.0)),
        "missed-lesion": (missed_one, several, (1.0, 1.0, 1.0)),
        "anisotropic": (a, _ball(shape, (22, 17, 16), 7), (0.8, 1.1, 3.0)),
        "2d": (a[:, :, 15], _ball(shape, (21, 19, 15), 8)[:, :, 15], (0.5, 0.7)),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_agreement_with_medpy(name):
    pred, ref, spacing = _cases()[name]
    assert dice(pred, ref) == pytest.approx(binary.dc(pred, ref), abs=1e-6)
    assert iou(pred, ref) == pytest.approx(binary.jc(pred, ref), abs=1e-6)
    r = rates(pred, ref)
    assert r["sensitivity"] == pytest.approx(binary.sensitivity(pred, ref), abs=1e-6)
    assert r["specificity"] == pytest.approx(binary.specificity(pred, ref), abs=1e-6)
    assert r["precision"] == pytest.approx(binary.precision(pred, ref), abs=1e-6)
    assert hausdorff(pred, ref, spacing, percentile=100) == pytest.approx(
        binary.hd(pred, ref, voxelspacing=spacing), abs=1e-6)
    s = surface_metrics(pred, ref, spacing)
    assert s["msd"] == pytest.approx(binary.assd(pred, ref, voxelspacing=spacing), abs=1e-6)
    assert s["hd95"] >= binary.hd95(pred, ref, voxelspacing=spacing) - 1e-9


def test_hand_computed_values():
    # two 1-voxel masks one voxel apart along an axis of 3 mm: HD = MSD = 3 mm, NSD(1 mm) = 0, (3 mm) = 1
    p = np.zeros((3, 3, 3), bool)
    r = np.zeros((3, 3, 3), bool)
    p[1, 1, 0], r[1, 1, 1] = True, True
    assert surface_metrics(p, r, (1.0, 1.0, 3.0), tolerance_mm=1.0) == {"hd95": 3.0, "msd": 3.0, "nsd": 0.0}
    assert surface_metrics(p, r, (1.0, 1.0, 3.0), tolerance_mm=3.0)["nsd"] == 1.0
    assert dice(p, r) == 0.0 and iou(p, r) == 0.0
    assert rates(p, r) == {"sensitivity": 0.0, "specificity": 25 / 26, "precision": 0.0}
    # empty masks: BraTS convention, undefined rates
    e = np.zeros((3, 3, 3), bool)
    conv = EmptyConvention()
    assert (dice(e, e), iou(e, e)) == (1.0, 1.0)
    assert surface_metrics(e, e, (1, 1, 1)) == {"hd95": 0.0, "msd": 0.0, "nsd": 1.0}
    assert surface_metrics(p, e, (1, 1, 1)) == {"hd95": conv.one_empty_hd, "msd": conv.one_empty_hd, "nsd": 0.0}
    assert rates(e, e) == {"sensitivity": None, "specificity": 1.0, "precision": None}
    assert rates(p, e)["sensitivity"] is None and rates(e, r)["precision"] is None


def _onehot(mask):
    import torch

    t = torch.from_numpy(np.asarray(mask, bool)).float()[None, None]
    return torch.cat([1 - t, t], 1)


@pytest.mark.parametrize("name", list(_cases()))
def test_agreement_with_monai(name):
    """MONAI's metric functions: Dice/IoU to 1e-6; HD95 (max of directed percentiles, as medseg),
    symmetric average surface distance and surface Dice to 1e-6 too (same surface definition)."""
    metrics = pytest.importorskip("monai.metrics")
    pred, ref, spacing = _cases()[name]
    p, r = _onehot(pred), _onehot(ref)
    assert dice(pred, ref) == pytest.approx(metrics.compute_dice(p, r, include_background=False).item(), abs=1e-6)
    assert iou(pred, ref) == pytest.approx(metrics.compute_iou(p, r, include_background=False).item(), abs=1e-6)
    s = surface_metrics(pred, ref, spacing, tolerance_mm=1.0)
    hd = metrics.compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing)).item()
    assert s["hd95"] == pytest.approx(hd, abs=1e-6, rel=1e-6)  # MONAI returns float32
    assert s["hd95"] == pytest.approx(hd, abs=float(np.linalg.norm(spacing)))  # the tolerance
    asd = metrics.compute_average_surface_distance(p, r, symmetric=True, spacing=list(spacing)).item()
    assert s["msd"] == pytest.approx(asd, abs=1e-6, rel=1e-6)
    nsd = metrics.compute_surface_dice(p, r, class_thresholds=[1.0], spacing=list(spacing)).item()
    assert s["nsd"] == pytest.approx(nsd, abs=1e-6)


def test_empty_masks_against_monai():
    """MONAI's ``ignore_empty`` Dice is NaN whenever the reference is empty; medseg's ``ignore``
    convention agrees for both-empty (undefined) but scores a prediction on an empty reference as
    Dice 0 (a false positive is an error, as nnU-Net scores it); ``brats`` gives 1 / 0."""
    metrics = pytest.importorskip("monai.metrics")
    e = np.zeros((6, 6, 6), bool)
    p = e.copy()
    p[2, 2, 2] = True
    monai_both = metrics.compute_dice(_onehot(e), _onehot(e), include_background=False, ignore_empty=True).item()
    monai_fp = metrics.compute_dice(_onehot(p), _onehot(e), include_background=False, ignore_empty=True).item()
    monai_fn = metrics.compute_dice(_onehot(e), _onehot(p), include_background=False, ignore_empty=True).item()
    ignore, brats = EmptyConvention.named("ignore"), EmptyConvention.named("brats")
    assert np.isnan(monai_both) and dice(e, e, ignore) is None and dice(e, e, brats) == 1.0
    assert np.isnan(monai_fp) and dice(p, e, ignore) == 0.0  # the written difference
    assert monai_fn == 0.0 and dice(e, p, ignore) == 0.0 and dice(e, p, brats) == 0.0
