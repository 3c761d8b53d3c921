import json

import nibabel as nib
import numpy as np

from medseg.data.synthetic import CHANNELS, SynthConfig, generate_case

CFG = SynthConfig(spacing=3.0)


def test_generation_is_deterministic():
    a = generate_case(7, True, CFG)
    b = generate_case(7, True, CFG)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    c = generate_case(8, True, CFG)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_case_contents_are_brats_like():
    case = generate_case(1, True, CFG)
    assert case.image.ndim == 4 and case.image.shape[-1] == len(CHANNELS) == 4
    assert case.label.shape == case.image.shape[:3]
    assert set(np.unique(case.label)) <= {0, 1, 2, 3}
    assert (case.label == 1).any() and (case.label >= 2).any()
    brain = case.image[..., 1] > 0
    assert (case.image[~brain] == 0).all(), "skull-stripped: background must be exactly zero"
    flair, t1gd = case.image[..., 0], case.image[..., 2]
    # edema is FLAIR-bright relative to the rest of the brain
    assert flair[case.label == 1].mean() > 1.2 * flair[brain & (case.label == 0)].mean()
    if (case.label == 3).any():  # enhancing tumour is T1gd-bright
        assert t1gd[case.label == 3].mean() > 1.2 * t1gd[brain & (case.label == 0)].mean()


def test_tumour_free_case_has_no_labels():
    case = generate_case(2, False, CFG)
    assert not case.label.any() and not case.has_tumour


def test_grid_varies_between_cases():
    codes = {nib.aff2axcodes(generate_case(s, False, CFG).affine) for s in range(8)}
    assert len(codes) > 1, "cases should come in more than one orientation"


def test_msd_layout(tiny_dataset):
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"]["3"].startswith("enhancing")
    assert len(meta["training"]) == 4 and len(meta["test"]) == 2
    for entry in meta["training"] + meta["test"]:
        img = nib.load(tiny_dataset / entry["image"])
        lab = nib.load(tiny_dataset / entry["label"])
        assert img.ndim == 4 and img.shape[3] == 4 and lab.shape == img.shape[:3]
        np.testing.assert_allclose(img.affine, lab.affine)
    test_labels = [np.asarray(nib.load(tiny_dataset / e["label"]).dataobj) for e in meta["test"]]
    assert any(not lab.any() for lab in test_labels), "the test split should hold a tumour-free case"
