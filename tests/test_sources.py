"""Dataset sources: BraTS 2021/2023 label mappings, MSD, NIfTI patterns and datalists, DICOM studies,
X-ray DICOM — each loaded case compared with the phantom it was written from."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from medseg.data.io.nifti import to_ras
from medseg.data.sources import make_source
from medseg.data.synthetic import SynthConfig, generate_case
from medseg.data.synthetic_formats import write_brats_dataset, write_dicom_dataset, write_xray_dataset
from medseg.errors import ConfigError, DataError

CFG = SynthConfig(n=3, n_test=0, spacing=5.0, seed=5, tumour_free_fraction=0.0)


def _phantom(i: int, cfg: SynthConfig = CFG):
    return generate_case(cfg.seed * 100003 + i, True, cfg)


@pytest.mark.parametrize("release,codes", [("brats2021", {1, 2, 4}), ("brats2023", {1, 2, 3})])
def test_brats_release_detected_and_labels_mapped(tmp_path, release, codes):
    root = write_brats_dataset(tmp_path / release, CFG, release, workers=1)
    src = make_source("brats", str(root), convention="auto")
    assert src.release == release and src.convention == release
    refs = src.cases()
    assert len(refs) == 3 and all(r.label is not None for r in refs)
    raw = np.asarray(nib.load(refs[0].label).dataobj)
    assert set(np.unique(raw)) - {0} <= codes
    case = src.load(refs[0])
    truth = _phantom(0)
    np.testing.assert_array_equal(case.label, truth.label)  # back to internal (MSD) coding
    np.testing.assert_allclose(case.image, np.round(np.moveaxis(truth.image, -1, 0)), atol=0.5)
    assert src.channels == ("FLAIR", "T1w", "t1gd", "T2w")


def test_brats_mixed_naming_is_refused(tmp_path):
    write_brats_dataset(tmp_path / "a", CFG, "brats2021", workers=1)
    write_brats_dataset(tmp_path / "b", SynthConfig(n=1, seed=9, spacing=5.0), "brats2023", workers=1)
    for d in (tmp_path / "b").iterdir():
        d.rename(tmp_path / "a" / d.name)
    with pytest.raises(DataError, match="mix BraTS 2021 and BraTS 2023"):
        make_source("brats", str(tmp_path / "a"), convention="auto")


def test_nifti_patterns_and_datalist(tmp_path):
    root = write_brats_dataset(tmp_path / "d", CFG, "brats2021", workers=1)
    patterns = {"FLAIR": "{case}/{case}_flair.nii.gz", "T1w": "{case}/{case}_t1.nii.gz",
                "t1gd": "{case}/{case}_t1ce.nii.gz", "T2w": "{case}/{case}_t2.nii.gz"}
    src = make_source("nifti", str(root), channels=list(patterns), patterns=patterns,
                      label_pattern="{case}/{case}_seg.nii.gz", convention="brats2021")
    refs = src.cases()
    assert [r.name for r in refs] == sorted(p.name for p in root.iterdir())
    case = src.load(refs[1])
    np.testing.assert_array_equal(case.label, _phantom(1).label)
    entries = [{"image": [f"{r.name}/{r.name}_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2")],
                "label": f"{r.name}/{r.name}_seg.nii.gz"} for r in refs]
    (root / "datalist.json").write_text(json.dumps({"training": entries[:2], "test": entries[2:]}))
    dl = make_source("nifti", str(root), channels=list(patterns), datalist="datalist.json", convention="brats2021")
    dl_refs = dl.cases()
    assert [r.split for r in dl_refs] == ["train", "train", "test"]
    np.testing.assert_array_equal(dl.load(dl_refs[1]).image, case.image)


def test_nifti_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs data.channels"):
        make_source("nifti", str(tmp_path))
    with pytest.raises(ConfigError, match=r"must contain \{case\}"):
        make_source("nifti", str(tmp_path), channels=["a"], patterns={"a": "x.nii.gz"}).cases()


def test_datalist_paths_outside_root_and_symlink_loops_are_problems(tmp_path):
    root = write_brats_dataset(tmp_path / "d", SynthConfig(n=1, spacing=6.0, seed=2), "brats2021", workers=1)
    name = next(root.iterdir()).name
    os.symlink(root / "loop_a", root / "loop_b")
    os.symlink(root / "loop_b", root / "loop_a")
    files = [f"{name}/{name}_{s}.nii.gz" for s in ("flair", "t1", "t1ce")]
    (root / "dl.json").write_text(json.dumps({"training": [
        {"image": [*files, "../../etc/passwd"], "label": "loop_a"}]}))
    src = make_source("nifti", str(root), channels=["a", "b", "c", "d"], datalist="dl.json")
    case, problems = src.check(src.cases()[0])
    assert case is None
    assert any("dl.json: path '../../etc/passwd' escapes the dataset folder" in p for p in problems)
    assert any("dl.json: path 'loop_a' loops through symlinks" in p for p in problems)


def test_dicom_studies_match_the_phantom(tmp_path):
    cfg = SynthConfig(n=4, n_test=0, spacing=5.0, seed=5, tumour_free_fraction=0.0)
    root = write_dicom_dataset(tmp_path / "dcm", cfg, workers=1)
    src = make_source("dicom", str(root))
    refs = sorted(src.cases(), key=lambda r: r.name)
    assert [r.name for r in refs] == ["SUBJ001", "SUBJ002", "SUBJ003", "SUBJ004"]
    assert all(len(r.series) == 4 and r.label is not None for r in refs)
    for i, ref in enumerate(refs):  # classic, sagittal T2, enhanced T1, implicit VR + sagittal T2
        case = src.load(ref)
        truth = _phantom(i, cfg)
        got, got_affine, _ = to_ras(np.moveaxis(case.image, 0, -1), case.affine)
        want, want_affine, _ = to_ras(truth.image, truth.affine)
        np.testing.assert_allclose(got_affine, want_affine, atol=1e-4)
        step = (want.max(axis=(0, 1, 2)) - want.min(axis=(0, 1, 2))) / 65535
        assert np.all(np.abs(got - want).max(axis=(0, 1, 2)) <= step + 1e-3)
        lab, _, _ = to_ras(case.label, case.affine)
        np.testing.assert_array_equal(lab, to_ras(truth.label, truth.affine)[0])


def test_dicom_channel_matching_problems_name_the_series(tmp_path):
    root = write_dicom_dataset(tmp_path / "dcm", SynthConfig(n=1, spacing=6.0, seed=1), workers=1)
    src = make_source("dicom", str(root), channels=["FLAIR", "DWI"],
                      series_patterns={"FLAIR": "flair", "DWI": "diffusion|dwi"})
    ref = src.cases()[0]
    case, problems = src.check(ref)
    assert case is None
    assert "no series matches channel 'DWI'" in problems[0] and "'T1 AX POST GD'" in problems[0]
    mapping = root / "mapping.json"
    mapping.write_text(json.dumps({"SUBJ001": {"FLAIR": "AX T2 FLAIR", "DWI": "T2 TSE AX"}}))
    src = make_source("dicom", str(root), channels=["FLAIR", "DWI"], series_mapping=str(mapping))
    case = src.load(src.cases()[0])
    assert case.image.shape[0] == 2


def test_xray_source_reads_every_variant(tmp_path):
    cfg = SynthConfig(n=4, spacing=4.0, seed=3, tumour_free_fraction=0.0)
    root = write_xray_dataset(tmp_path / "xr", cfg, workers=1)
    src = make_source("xray", str(root), convention="binary")
    refs = src.cases()
    assert len(refs) == 4 and all(r.label is not None for r in refs)
    assert {r.label.suffix for r in refs} == {".png", ".gz"}
    cases = [src.load(r) for r in refs]
    assert {c.extra["photometric"] for c in cases} == {"MONOCHROME1", "MONOCHROME2"}
    assert {c.extra["spacing_source"] for c in cases} == {"PixelSpacing", "ImagerPixelSpacing/1.1",
                                                          "ImagerPixelSpacing"}
    for c in cases:
        assert c.image.shape[0] == 1 and c.image.shape[-1] == 1 and c.label.shape == c.image.shape[1:]
        np.testing.assert_allclose(c.spacing[:2], (4.0, 4.0), atol=1e-6)
        assert set(np.unique(c.label)) <= {0, 1} and c.label.any()
    # whatever the photometric interpretation, the skull (high attenuation) is bright
    for c in cases:
        img = c.image[0, :, :, 0]
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        assert np.median(img) > np.median(border)


def test_source_options_are_plain_for_typed_and_dict_configs(tmp_path):
    from omegaconf import OmegaConf

    from dataclasses import replace

    from medseg.config import DEFAULT_SERIES_PATTERNS, DataConfig, DataConvention, SourceKind
    from medseg.data.cache import cache_key
    from medseg.data.sources import SOURCE_KEYS, BraTSSource, build_source, source_options

    data = DataConfig(source=SourceKind.brats, root=str(tmp_path / "elsewhere"), convention=DataConvention.auto,
                      channels=["a", "b"])
    options = source_options(data)
    assert options == source_options(OmegaConf.structured(data))
    assert options["convention"] == "auto" and type(options["convention"]) is str
    # only the options a BraTS source takes: its channels come from the release, DICOM hints are not
    # its concern (and cannot change its cache key)
    assert set(options) == {"convention", "max_voxels", "affine_tol_mm"} < set(SOURCE_KEYS)
    assert cache_key(options) == cache_key(source_options(replace(data, series_patterns={"FLAIR": "x"})))
    dicom = source_options(replace(data, source=SourceKind.dicom))
    assert dicom["channels"] == ["a", "b"] and dicom["series_patterns"] == DEFAULT_SERIES_PATTERNS
    assert {"patterns", "datalist", "mask_dir"}.isdisjoint(dicom)
    root = write_brats_dataset(tmp_path / "brats", CFG, "brats2023", workers=1)
    src = build_source(data, root=root)  # the data settings over another folder
    assert isinstance(src, BraTSSource) and src.release == "brats2023" and len(src.cases()) == CFG.n


def test_a_bad_case_raises_with_every_problem_typed(tmp_path):
    """Problems travel as values: the raised error carries the whole list, none re-parsed from text."""
    import pickle

    from medseg.errors import InvalidCase

    err = InvalidCase("c1", tmp_path / "c1.nii.gz", [f"{tmp_path / 'c1.nii.gz'}: holds NaN", "c1_seg: bad label"])
    assert err.problems[1] == "c1_seg: bad label" and err.path == tmp_path / "c1.nii.gz"
    assert str(err) == f"{tmp_path / 'c1.nii.gz'}: holds NaN (and 1 more problems)"
    again = pickle.loads(pickle.dumps(err))
    assert again.problems == err.problems and str(again) == str(err)


def test_a_source_that_forwards_its_options_is_given_them_all():
    """Options are filtered by the constructor's parameters; one that passes ``**kwargs`` on (to a
    base class) takes every source key, or it would silently lose its settings."""
    from medseg.data.sources import SOURCE_KEYS, NiftiSource, _parameters

    class Wrapped(NiftiSource):
        def __init__(self, root, **kwargs):
            super().__init__(root, **kwargs)

    assert _parameters(Wrapped) == set(SOURCE_KEYS)
    assert {"channels", "patterns", "datalist"} <= _parameters(NiftiSource) and "series_patterns" not in _parameters(
        NiftiSource)
