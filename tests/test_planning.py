"""Planning (target spacing, patch size within a memory budget) and the label-convention registry."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.labels import BRATS_REGIONS, CONVENTIONS, check_nested, label_spec, region_masks, remap_labels
from medseg.data.planning import estimate_memory_gb, plan_patch, plan_spacing
from medseg.errors import ConfigError, DataError

MODEL = {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 0}


def test_target_spacing_is_the_median_or_10th_percentile_for_thick_slices():
    iso = np.array([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [0.9, 1.1, 1.0]])
    target, why = plan_spacing(iso)
    assert target == [1.0, 1.0, 1.0] and "median" in why
    thick = np.array([[0.5, 0.5, 5.0], [0.5, 0.5, 6.0], [0.5, 0.5, 3.0], [0.5, 0.5, 5.0]])
    target, why = plan_spacing(thick)
    assert target[:2] == [0.5, 0.5] and target[2] == pytest.approx(np.percentile([5, 6, 3, 5], 10))
    assert "10th percentile" in why


def test_planned_patch_fits_the_budget_and_shrinks_with_it():
    median = [140, 170, 140]
    big, est_big = plan_patch(median, MODEL, 4, 4, 2, budget_gb=64.0, divisor=16)
    assert big == [144, 176, 144] and est_big <= 64.0  # the whole median image
    small, est_small = plan_patch(median, MODEL, 4, 4, 2, budget_gb=0.5, divisor=16)
    assert est_small <= 0.5 and all(p % 16 == 0 for p in small)
    assert np.prod(small) < np.prod(big)
    assert estimate_memory_gb(small, MODEL, 4, 4, 2) == pytest.approx(est_small)
    # more memory per voxel (residual units, bigger batch) means a smaller patch for the same budget
    heavy, _ = plan_patch(median, {**MODEL, "num_res_units": 2}, 4, 4, 4, budget_gb=0.5, divisor=16)
    assert np.prod(heavy) <= np.prod(small)


def test_2d_plan_uses_two_axes():
    patch, est = plan_patch([300, 250, 1], MODEL, 1, 2, 8, budget_gb=4.0, divisor=16, spatial_dims=2)
    assert len(patch) == 2 and est <= 4.0 and all(p % 16 == 0 for p in patch)


def test_registry_maps_every_convention_onto_internal_labels():
    assert label_spec("brats2021").regions == BRATS_REGIONS
    assert label_spec("binary").regions == {"lesion": (1,)}
    with pytest.raises(ConfigError, match="valid:"):
        label_spec("brats2019")
    for name, table in CONVENTIONS.items():
        codes = np.array(sorted(table))
        np.testing.assert_array_equal(remap_labels(codes, name), [table[c] for c in codes])
    # BraTS 2021: 1 necrotic core -> internal 2, 2 edema -> 1, 4 enhancing -> 3
    np.testing.assert_array_equal(remap_labels(np.array([0, 1, 2, 4]), "brats2021"), [0, 2, 1, 3])
    np.testing.assert_array_equal(remap_labels(np.array([0, 255, 1]), "binary"), [0, 1, 1])


def test_regions_nest_and_violations_are_refused():
    label = np.array([0, 1, 2, 3, 3, 2])
    check_nested(region_masks(label, BRATS_REGIONS))  # label maps always nest
    masks = region_masks(label, BRATS_REGIONS)
    masks["enhancing_tumour"] = masks["enhancing_tumour"] | np.array([1, 0, 0, 0, 0, 0], bool)
    with pytest.raises(DataError, match="1 voxels of enhancing_tumour lie outside tumour_core"):
        check_nested(masks, path="pred.nii.gz")
