"""Lesion-wise metrics (BraTS 2023 rules) on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.lesions import lesion_metrics

SHAPE = (40, 40, 20)


def _cube(mask, corner, size):
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def test_detected_missed_and_false_positive_lesions():
    ref = _cube(_cube(np.zeros(SHAPE, bool), (2, 2, 2), 6), (25, 25, 10), 6)
    pred = _cube(_cube(np.zeros(SHAPE, bool), (2, 2, 2), 6), (30, 5, 5), 5)  # one exact, one FP, one missed
    m = lesion_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (m["lesion_tp"], m["lesion_fn"], m["lesion_fp"]) == (1, 1, 1)
    assert m["lesion_dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert m["lesion_hd95"] == pytest.approx((0 + 374 + 374) / 3)
    assert m["lesion_f1"] == pytest.approx(2 / 4)


def test_nearby_lesions_merge_small_ones_are_ignored_and_empty_is_perfect():
    ref = _cube(_cube(np.zeros(SHAPE, bool), (5, 5, 5), 5), (12, 5, 5), 5)  # 2 voxels apart: one lesion
    pred = _cube(np.zeros(SHAPE, bool), (5, 5, 5), 5)
    m = lesion_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert (m["lesion_tp"], m["lesion_fn"], m["lesion_fp"]) == (1, 0, 0)
    assert m["lesion_dice"] == pytest.approx(2 * 125 / (125 + 250))  # both cubes form one lesion
    tiny = _cube(np.zeros(SHAPE, bool), (30, 30, 10), 2)  # 8 mm³ < 50 mm³: ignored, and so is its match
    m = lesion_metrics(tiny, tiny, (1.0, 1.0, 1.0))
    assert (m["lesion_tp"], m["lesion_fn"], m["lesion_fp"]) == (0, 0, 0)
    assert m["lesion_dice"] == 1.0 and m["lesion_hd95"] == 0.0 and m["lesion_f1"] == 1.0
    empty = np.zeros(SHAPE, bool)
    assert lesion_metrics(empty, empty, (1, 1, 1))["lesion_dice"] == 1.0
    fp_only = lesion_metrics(pred, empty, (1, 1, 1))
    assert fp_only["lesion_dice"] == 0.0 and fp_only["lesion_fp"] == 1 and fp_only["lesion_hd95"] == 374.0


def test_detection_boxes_in_world_mm_and_roc_auc():
    from medseg.data.labels import BRATS_REGIONS
    from medseg.metrics.detection import case_level, detect, roc_auc

    label = np.zeros((20, 20, 10), np.uint8)
    label[2:6, 3:5, 1:3] = 1
    label[3:5, 3:5, 1:2] = 3
    label[15:17, 15:17, 7:9] = 2
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    d = detect(label, affine, BRATS_REGIONS, min_volume_ml=0.01)
    assert d["n_lesions"] == 2 and d["tumour_present"]
    big = d["lesions"][0]
    assert big["bbox_mm"] == [[-6.0, 3.0, 8.0], [0.0, 4.0, 11.0]]
    assert big["volume_ml"] == pytest.approx(4 * 2 * 2 * 6 / 1000)
    assert big["volume_ml_per_region"]["enhancing_tumour"] == pytest.approx(2 * 2 * 1 * 6 / 1000)
    assert not detect(label, affine, BRATS_REGIONS, min_volume_ml=1.0)["tumour_present"]
    assert roc_auc([0.9, 0.8, 0.3, 0.8], [True, True, False, False]) == pytest.approx((2 + 1 + 0.5) / 4)
    assert roc_auc([1.0], [True]) is None
    assert case_level([True, False, True], [True, True, False]) == {
        "sensitivity": 0.5, "specificity": 0.0, "tp": 1, "fp": 1, "fn": 1, "tn": 0}
