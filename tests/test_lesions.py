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
