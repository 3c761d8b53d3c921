import numpy as np
import pytest
import torch
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from medseg.data.labels import BRATS_REGIONS, region_masks, remap_labels
from medseg.errors import DataError


def test_msd_is_identity():
    lab = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(remap_labels(lab, "msd"), lab)


def test_brats2021_mapping():
    # BraTS 2018-2021: 1 necrotic core, 2 edema, 4 enhancing -> internal 2, 1, 3
    np.testing.assert_array_equal(remap_labels(np.array([0, 1, 2, 4]), "brats2021"), [0, 2, 1, 3])


def test_brats2023_mapping():
    np.testing.assert_array_equal(remap_labels(np.array([0, 1, 2, 3]), "brats2023"), [0, 2, 1, 3])


def test_unknown_values_are_refused_with_file_name():
    with pytest.raises(DataError, match=r"seg\.nii\.gz: label values \[3\]"):
        remap_labels(np.array([0, 1, 3]), "brats2021", "seg.nii.gz")


def test_regions_on_msd_coding():
    lab = np.array([0, 1, 2, 3])  # background, edema, non-enhancing, enhancing
    m = region_masks(lab, BRATS_REGIONS)
    np.testing.assert_array_equal(m["whole_tumour"], [False, True, True, True])
    np.testing.assert_array_equal(m["tumour_core"], [False, False, True, True])
    np.testing.assert_array_equal(m["enhancing_tumour"], [False, False, False, True])
    assert not (m["enhancing_tumour"] & ~m["tumour_core"]).any()
    assert not (m["tumour_core"] & ~m["whole_tumour"]).any()


def test_monai_brats_converter_is_wrong_for_msd_labels():
    """The tutorial bug the brief warns about: MONAI's converter assumes BraTS 2018-2021 codes."""
    lab = torch.tensor([[0, 1, 2, 3]])
    tc, wt, et = ConvertToMultiChannelBasedOnBratsClasses()(lab)
    ours = region_masks(lab.numpy(), BRATS_REGIONS)
    assert not np.array_equal(tc.numpy(), ours["tumour_core"])  # MONAI calls edema (1) core
    assert not np.array_equal(et.numpy(), ours["enhancing_tumour"])  # and looks for label 4
