import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from medseg.data.labels import LabelSpec
from medseg.metrics import EmptyConvention, case_metrics, dice, hausdorff


def cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_dice_hand_computed():
    a = cube((10, 10, 10), (2, 2, 2), (5, 5, 5))  # 27 voxels
    b = cube((10, 10, 10), (3, 2, 2), (6, 5, 5))  # 27 voxels, 18 shared
    assert dice(a, b) == pytest.approx(2 * 18 / 54)
    assert dice(a, a) == 1.0


@pytest.mark.parametrize("pred_empty,ref_empty,expected_dice,expected_hd", [
    (True, True, 1.0, 0.0),
    (True, False, 0.0, 373.13),
    (False, True, 0.0, 373.13),
])
def test_empty_convention(pred_empty, ref_empty, expected_dice, expected_hd):
    full = cube((6, 6, 6), (1, 1, 1), (3, 3, 3))
    empty = np.zeros_like(full)
    p = empty if pred_empty else full
    r = empty if ref_empty else full
    assert dice(p, r) == expected_dice
    assert hausdorff(p, r, (1, 1, 1)) == expected_hd


def test_custom_empty_convention():
    conv = EmptyConvention(both_empty_dice=float("nan"), one_empty_hd=100.0, name="custom")
    z = np.zeros((3, 3, 3), bool)
    assert np.isnan(dice(z, z, conv))
    assert hausdorff(z, cube((3, 3, 3), (0, 0, 0), (1, 1, 1)), (1, 1, 1), empty=conv) == 100.0


def test_hd_shift_honours_anisotropic_spacing():
    a = cube((12, 12, 12), (3, 3, 3), (7, 7, 7))
    b = cube((12, 12, 12), (5, 3, 3), (9, 7, 7))  # shifted by 2 voxels along axis 0
    assert hausdorff(a, b, (1.0, 1.0, 1.0), percentile=100) == pytest.approx(2.0)
    assert hausdorff(a, b, (3.0, 1.0, 1.0), percentile=100) == pytest.approx(6.0)
    assert hausdorff(a, b, (1.0, 5.0, 5.0), percentile=100) == pytest.approx(2.0)


def test_hd95_matches_monai_directed_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = cube((20, 20, 20), rng.integers(2, 6, 3), rng.integers(10, 16, 3))
        b = cube((20, 20, 20), rng.integers(2, 6, 3), rng.integers(10, 16, 3))
        ours = hausdorff(a, b, (1, 1, 1), percentile=95)
        ref = compute_hausdorff_distance(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None],
                                         percentile=95, directed=False).item()
        assert ours == pytest.approx(ref, abs=1e-6)


def test_case_metrics_structures_and_volumes():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[3:7, 3:7, 3:7] = 2
    ref[4:6, 4:6, 4:6] = 3
    out = case_metrics(ref, ref, (2.0, 2.0, 2.0), LabelSpec())
    assert list(out) == ["whole_tumour", "tumour_core", "enhancing_tumour", "label1_edema",
                         "label2_non_enhancing_tumour", "label3_enhancing_tumour"]
    assert all(v["dice"] == 1.0 and v["hd95"] == 0.0 for v in out.values())
    assert out["whole_tumour"]["volume_ref_ml"] == pytest.approx(6**3 * 8 / 1000)
