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


# ---- BraTS 2024+ label sets (issue 15) -------------------------------------------------------------

from medseg.data.labels import CONVENTIONS, label_spec, nested_chain  # noqa: E402

#: source code -> the region names (of the convention's label set) it belongs to
EXPECTED_MEMBERSHIP = {
    "brats2024_gli": {1: {"tumour_core", "whole_tumour", "non_enhancing_core"},
                      2: {"whole_tumour", "surrounding_hyperintensity"},
                      3: {"enhancing_tumour", "tumour_core", "whole_tumour"},
                      4: {"resection_cavity"}},
    "brats2024_met": {1: {"tumour_core", "whole_tumour"}, 2: {"whole_tumour"},
                      3: {"enhancing_tumour", "tumour_core", "whole_tumour"}, 4: {"resection_cavity"}},
    "brats2024_ped": {1: {"enhancing_tumour", "tumour_core", "whole_tumour"},
                      2: {"non_enhancing_core", "tumour_core", "whole_tumour"},
                      3: {"cystic_component", "tumour_core", "whole_tumour"}, 4: {"edema", "whole_tumour"}},
    "brats2024_men": {1: {"tumour_core", "whole_tumour"}, 2: {"whole_tumour"},
                      3: {"enhancing_tumour", "tumour_core", "whole_tumour"}},
    "brats2024_menrt": {1: {"gross_tumour_volume"}},
}


@pytest.mark.parametrize("convention", sorted(EXPECTED_MEMBERSHIP))
def test_brats2024_regions_match_brats_evaluation_groups(convention):
    """Each source code lies in exactly the regions brats-evaluation's config groups put it in."""
    spec = label_spec(convention)
    codes = np.array(sorted(EXPECTED_MEMBERSHIP[convention]))
    masks = region_masks(remap_labels(codes, convention), spec.regions)
    for i, code in enumerate(codes):
        assert {r for r, m in masks.items() if m[i]} == EXPECTED_MEMBERSHIP[convention][int(code)], code
    assert spec.num_classes == max(CONVENTIONS[convention].values()) + 1


@pytest.mark.parametrize("convention", sorted(EXPECTED_MEMBERSHIP))
def test_brats2024_remap_round_trips(convention):
    table = CONVENTIONS[convention]
    back = {v: k for k, v in table.items()}
    rng = np.random.default_rng(0)
    source = rng.choice(sorted(table), size=(6, 5, 4))
    internal = remap_labels(source, convention)
    np.testing.assert_array_equal(np.vectorize(back.get)(internal), source)
    assert set(np.unique(internal)) <= set(label_spec(convention).labels)


def test_resection_cavity_is_outside_the_tumour_regions_and_the_nesting_chain():
    spec = label_spec("brats2024_gli")
    assert spec.labels[4] == "resection cavity" and spec.num_classes == 5
    assert 4 not in spec.regions["whole_tumour"] and spec.regions["resection_cavity"] == (4,)
    assert nested_chain(spec.regions) == ("whole_tumour", "tumour_core", "enhancing_tumour")
    with pytest.raises(DataError, match="label values \\[5\\]"):
        remap_labels(np.array([0, 4, 5]), "brats2024_gli", "seg.nii.gz")
