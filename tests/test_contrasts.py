"""Contrast identification from the DICOM acquisition (issue 15, item 1): every built-in study maps
its four contrasts in each vendor's description style, with misleading descriptions and with none;
the reasons reach verification.json; every ambiguity message names both series and is true."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.data.contrasts import LOCALISER_DESCRIPTION, choose, identify_series, weighting
from medseg.data.io.dicom import scan
from medseg.data.sources import make_source
from medseg.data.sources.base import walk_files
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import CONTRAST_AGENT, DICOM_STYLES, write_dicom_dataset
from medseg.data.verify import verify_dataset
from medseg.errors import DataError

SMALL = SynthConfig(n=6, n_test=0, spacing=12.0, fov_mm=(96.0, 108.0, 84.0), seed=1, tumour_free_fraction=0.0)
#: series number of each channel in the built-in studies (1 is the localiser)
NUMBERS = {"FLAIR": 2, "T1w": 3, "t1gd": 4, "T2w": 5}


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """One study per description style (generic, Siemens, GE, Philips, misleading, none)."""
    return write_dicom_dataset(tmp_path_factory.mktemp("styles") / "dcm", SMALL, workers=1)


def _copy_series(root: Path, case: str, series: str, new_number: int, **changes: str) -> Path:
    """Copy one series of a built-in study as a new series (new UIDs) with changed attributes."""
    src = next((root / "dicom" / case).glob(f"*/{series}"))
    dst = src.parent / f"SE{new_number:03d}"
    uid = pydicom.uid.generate_uid()
    for f in src.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, new_number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        for key, value in changes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        dst.mkdir(exist_ok=True)
        ds.save_as(dst / f.name)
    return dst


def test_every_style_maps_all_four_contrasts_from_the_acquisition(studies):
    src = make_source("dicom", str(studies))
    refs = {r.name: r for r in src.cases()}
    assert len(refs) == len(DICOM_STYLES) == 6
    for i, style in enumerate(DICOM_STYLES):
        ref = refs[f"SUBJ{i + 1:03d}"]
        assert not ref.problems, (style, ref.problems)
        chosen = {c: (n, reasons) for c, _, n, _, reasons in ref.identification}
        assert {c: n for c, (n, _) in chosen.items()} == NUMBERS, style
        assert all(reasons for _, reasons in chosen.values()), style
        post = " ".join(chosen["t1gd"][1])
        assert f"ContrastBolusAgent {CONTRAST_AGENT!r}" in post, style
        assert "acquired before series 4" in " ".join(chosen["T1w"][1]), style
        assert "InversionTime 2500 ms >= 1500" in " ".join(chosen["FLAIR"][1]), style
        case = src.load(ref)
        assert case.image.shape[0] == 4 and all(case.image[c].any() for c in range(4))


def test_misleading_descriptions_are_noted_and_overruled(studies):
    ref = next(r for r in make_source("dicom", str(studies)).cases() if r.name == "SUBJ005")
    reasons = {c: " ".join(r) for c, _, _, _, r in ref.identification}
    assert "'T1 AX POST' suggests ['t1gd'] (ignored: the attributes decide)" in reasons["T1w"]
    assert "'AX T2' suggests ['T2w'] (ignored" in reasons["FLAIR"]


def test_siemens_post_contrast_has_only_the_agent_to_tell_it(studies):
    ref = next(r for r in make_source("dicom", str(studies)).cases() if r.name == "SUBJ002")
    described = {c: d for c, _, _, d, _ in ref.identification}
    assert described["T1w"] == described["t1gd"] == "t1_mprage_sag_p2_iso"


def test_enhanced_mr_functional_groups_give_the_weighting(studies):
    ref = next(r for r in make_source("dicom", str(studies)).cases() if r.name == "SUBJ003")  # enhanced T1
    reasons = {c: r for c, _, _, _, r in ref.identification}
    assert reasons["T1w"][0] == "AcquisitionContrast T1"


def test_reasons_are_recorded_in_verification_json(studies, tmp_path):
    src = make_source("dicom", str(studies))
    verify_dataset(src, tmp_path / "cache", "key", 1, False, tmp_path)
    report = json.loads((tmp_path / "verification.json").read_text())
    assert report["n_ok"] == 6
    for case in report["cases"]:
        assert set(case["contrasts"]) == set(NUMBERS)
        assert all(v["reasons"] and v["series_uid"] for v in case["contrasts"].values())


def test_two_flairs_are_an_ambiguity_naming_both_and_what_ties_them(studies, tmp_path):
    root = shutil.copytree(studies, tmp_path / "dcm")
    copy = _copy_series(root, "SUBJ006", "SE002", 9)  # descriptions removed: nothing separates them
    ref = next(r for r in make_source("dicom", str(root)).cases() if r.name == "SUBJ006")
    assert len(ref.problems) == 1
    message = ref.problems[0]
    uids = {pydicom.dcmread(next(copy.iterdir())).SeriesInstanceUID,
            pydicom.dcmread(next((copy.parent / "SE002").iterdir())).SeriesInstanceUID}
    assert all(uid in message for uid in uids)
    assert "channel 'FLAIR'" in message and "2 series are candidates" in message
    assert "all identified as FLAIR from their acquisition attributes, and no description matches" in message
    assert message.count("InversionTime 2500 ms") == 2
    assert "no DICOM series matches" not in message and "\n" not in message


def test_a_description_breaks_a_tie_and_the_mapping_overrides(studies, tmp_path):
    root = shutil.copytree(studies, tmp_path / "dcm")
    _copy_series(root, "SUBJ006", "SE002", 9, SeriesDescription="AX FLAIR")
    ref = next(r for r in make_source("dicom", str(root)).cases() if r.name == "SUBJ006")
    assert not ref.problems
    assert {c: n for c, _, n, _, _ in ref.identification}["FLAIR"] == 9
    mapping = root / "mapping.json"
    uid = {c: u for c, u, _, _, _ in ref.identification}
    mapping.write_text(json.dumps({"SUBJ006": {**uid, "FLAIR": uid["T2w"], "T2w": uid["FLAIR"]}}))
    ref = next(r for r in make_source("dicom", str(root), series_mapping=str(mapping)).cases() if r.name == "SUBJ006")
    chosen = {c: (n, r) for c, _, n, _, r in ref.identification}
    assert chosen["FLAIR"][0] == 5 and chosen["FLAIR"][1][0].startswith("data.series_mapping names")
    assert chosen["T2w"][0] == 9 and not ref.problems


def test_a_mapping_that_names_one_channel_leaves_the_others_identified(studies, tmp_path):
    root = shutil.copytree(studies, tmp_path / "dcm")
    copy = _copy_series(root, "SUBJ006", "SE002", 9)  # two FLAIRs that nothing separates
    before = {c: (u, n) for c, u, n, _, _ in
              next(r for r in make_source("dicom", str(studies)).cases() if r.name == "SUBJ006").identification}
    flair = pydicom.dcmread(next(copy.iterdir())).SeriesInstanceUID
    mapping = root / "mapping.json"
    mapping.write_text(json.dumps({"SUBJ006": {"FLAIR": flair}}))
    ref = next(r for r in make_source("dicom", str(root), series_mapping=str(mapping)).cases() if r.name == "SUBJ006")
    assert not ref.problems  # the mapping settles the tie
    chosen = {c: (u, n, r) for c, u, n, _, r in ref.identification}
    assert chosen["FLAIR"] == (flair, 9, (f"data.series_mapping names {flair!r}",))
    others = ("T1w", "t1gd", "T2w")
    assert {c: chosen[c][:2] for c in others} == {c: before[c] for c in others}
    assert not any(r.startswith("data.series_mapping") for c in others for r in chosen[c][2])
    # the series identified as T2w named for FLAIR is not offered to T2w again: T2w has none left
    mapping.write_text(json.dumps({"SUBJ006": {"FLAIR": before["T2w"][0]}}))
    ref = next(r for r in make_source("dicom", str(root), series_mapping=str(mapping)).cases() if r.name == "SUBJ006")
    assert len(ref.problems) == 1 and "no series matches channel 'T2w' in study of SUBJ006" in ref.problems[0]
    assert ref.problems[0].count("(named for another channel by the mapping)") == 1


def test_a_mapping_is_held_to_its_word(studies, tmp_path, caplog):
    """A key that is not a channel is refused; a named series that is absent is an error even where
    channels may be missing (predict), and problems come in channel order."""
    root = shutil.copytree(studies, tmp_path / "dcm")
    mapping = root / "mapping.json"
    mapping.write_text(json.dumps({"SUBJ006": {"flair": "AX FLAIR"}}))
    with pytest.raises(DataError, match=r"mapping.json: series mapping names \['flair'\], which are not among the "
                                        r"channels \['FLAIR', 'T1w', 't1gd', 'T2w'\] \(in 1 case\(s\), such as 'SUBJ006'\)"):
        make_source("dicom", str(root), series_mapping=str(mapping))
    _copy_series(root, "SUBJ006", "SE002", 9)  # FLAIR ambiguous, and T2w mapped to a series not there
    mapping.write_text(json.dumps({"SUBJ006": {"T2w": "1.2.3.4"}}))
    src = make_source("dicom", str(root), series_mapping=str(mapping))
    src.allow_missing = True
    ref = next(r for r in src.cases() if r.name == "SUBJ006")
    assert not ref.missing and len(ref.problems) == 2
    assert "channel 'FLAIR'" in ref.problems[0] and "2 series are candidates" in ref.problems[0]
    assert "no series matches channel 'T2w' (data.series_mapping names '1.2.3.4')" in ref.problems[1]
    assert src.check(ref)[0] is None
    # one series named for two channels: the later one is an error naming both
    t2, described = {c: (u, d) for c, u, _, d, _ in next(r for r in make_source("dicom", str(studies)).cases()
                                                         if r.name == "SUBJ005").identification}["T2w"]
    mapping.write_text(json.dumps({"SUBJ005": {"T1w": t2, "T2w": t2}, "SUBJ099": {"FLAIR": "AX FLAIR"}}))
    with caplog.at_level(logging.WARNING, logger="medseg.data.sources.dicom"):
        refs = {r.name: r for r in make_source("dicom", str(root), series_mapping=str(mapping)).cases()}
    assert [p.split(": ", 1)[1] for p in refs["SUBJ005"].problems] == [
        f"the series mapping names one series (series 5 {described!r}, {t2}) for both 'T1w' and 'T2w' "
        f"in study of SUBJ005"]
    # an entry that matches no study is said, not silently dropped; the studies are identified
    assert "entries ['SUBJ099'] match no study here" in caplog.text and not refs["SUBJ001"].problems


def test_two_t1_without_any_agent_are_an_ambiguity_that_says_so(studies, tmp_path):
    root = shutil.copytree(studies, tmp_path / "dcm")
    post = next((root / "dicom" / "SUBJ006").glob("*/SE004"))
    for f in post.iterdir():  # the agent removed: an MPRAGE and a spin echo, both T1, no descriptions
        ds = pydicom.dcmread(f)
        del ds.ContrastBolusAgent, ds.ContrastBolusRoute
        ds.save_as(f)
    ref = next(r for r in make_source("dicom", str(root)).cases() if r.name == "SUBJ006")
    message = next(p for p in ref.problems if "'T1w'" in p)
    assert "2 series are candidates (all identified as T1" in message
    assert message.count("no series of the study records ContrastBolusAgent") == 2
    assert "series 3 ''" in message and "series 4 ''" in message
    assert "no series matches channel 't1gd'" in " ".join(ref.problems)


def test_no_candidate_anywhere_says_what_was_found(tmp_path):
    root = write_dicom_dataset(tmp_path / "dcm", SynthConfig(n=1, spacing=12.0, fov_mm=(96.0, 108.0, 84.0)),
                               workers=1, styles=("none",))
    for series in (root / "dicom").glob("*/*/SE00[2-5]"):
        shutil.rmtree(series)  # the localiser alone is left
    with pytest.raises(Exception) as err:
        make_source("dicom", str(root)).cases()
    assert "no DICOM series is identified as any of the channels" in str(err.value)
    assert "<no description>" in str(err.value)


def test_a_study_without_one_series_is_accepted_only_when_allowed(studies, tmp_path):
    root = shutil.copytree(studies, tmp_path / "dcm")
    shutil.rmtree(next((root / "dicom" / "SUBJ004").glob("*/SE005")))  # no T2
    src = make_source("dicom", str(root))
    ref = next(r for r in src.cases() if r.name == "SUBJ004")
    assert any("no series matches channel 'T2w'" in p for p in ref.problems)
    src.allow_missing = True
    ref = next(r for r in src.cases() if r.name == "SUBJ004")
    assert not ref.problems and ref.missing == ("T2w",)
    case = src.load(ref)
    assert not case.image[3].any() and all(case.image[c].any() for c in range(3))


@pytest.mark.parametrize("attrs,expected", [
    ({"AcquisitionContrast": "FLUID_ATTENUATED"}, "FLAIR"),
    ({"ScanningSequence": ["SE", "IR"], "InversionTime": 150.0, "RepetitionTime": 5000.0, "EchoTime": 60.0}, "STIR"),
    ({"ScanningSequence": ["SE"], "RepetitionTime": 3000.0, "EchoTime": 15.0}, "PD"),
    ({"ScanningSequence": ["GR"], "RepetitionTime": 650.0, "EchoTime": 20.0}, "T2*"),
    ({"ScanningSequence": ["GR"], "RepetitionTime": 8.1, "EchoTime": 3.7}, "T1"),
    ({"ScanningSequence": ["SE"]}, None),
])
def test_weighting_rules(attrs, expected):
    weight, reasons = weighting(attrs)
    assert weight == expected and reasons


def test_localisers_derived_and_projection_images_are_not_inputs(studies):
    series, _ = scan(walk_files(studies / "dicom" / "SUBJ001"))
    patterns = {c: re.compile(p, re.I) for c, p in {"FLAIR": "flair", "T1w": "t1", "t1gd": "gd", "T2w": "t2"}.items()}
    loc = next(s for s in series if s.series_number == 1)
    flair = next(s for s in series if s.series_number == 2)
    mip = type(flair)(**{**flair.__dict__, "series_uid": "1.2.3", "series_number": 7,
                         "acquisition": {**flair.acquisition, "ImageType": ["DERIVED", "SECONDARY", "MIP"]}})
    got = identify_series([loc, flair, mip], list(patterns), patterns)
    assert got[0].channel is None and "a localiser" in got[0].reasons[0]
    assert got[2].channel is None and "a projection (MIP)" in got[2].reasons[0]
    assert choose(got, "FLAIR")[0].series is flair


DCIODVFY = shutil.which("dciodvfy")


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (make validators)")
def test_misleading_and_description_free_studies_pass_dciodvfy(studies):
    files = [f for case in ("SUBJ005", "SUBJ006") for f in sorted((studies / "dicom" / case).rglob("IM*"))[::5]]
    errors = []
    for f in files:
        out = subprocess.run([DCIODVFY, str(f)], capture_output=True, text=True, timeout=60)
        errors += [f"{f}: {x}" for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
    assert files and not errors, "\n".join(errors[:20])
    assert np.all([pydicom.dcmread(f, stop_before_pixels=True).get("SeriesDescription") is None
                   for f in files if "SUBJ006" in str(f)])


@pytest.mark.parametrize("description", ["3-PLANE LOC", "FAST LOCALIZER", "T/S/C RF FAST PILOT", "SmartBrain Survey",
                                         "AAHead_Scout_64ch"])
def test_a_localiser_named_only_by_its_description_is_not_an_input(studies, tmp_path, description):
    """GE writes its localisers as ImageType ORIGINAL\\PRIMARY\\OTHER with T1-like TR/TE (pydicom's
    dicomdirtests: 'FAST LOCALIZER', 'T/S/C RF FAST PILOT'): without the description rule such a
    series is a second T1 candidate and the study is refused as ambiguous."""
    root = shutil.copytree(studies, tmp_path / "dcm")
    _copy_series(root, "SUBJ001", "SE003", 9, SeriesDescription=description, ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
    series, _ = scan(walk_files(root / "dicom" / "SUBJ001"))
    loc = next(s for s in series if s.series_number == 9)
    assert loc.acquisition["ImageType"] == ["ORIGINAL", "PRIMARY", "OTHER"]
    ref = next(r for r in make_source("dicom", str(root)).cases() if r.name == "SUBJ001")
    assert not ref.problems, ref.problems
    chosen = {c: n for c, _, n, _, _ in ref.identification}
    assert chosen == NUMBERS
    got = identify_series(series, list(NUMBERS), {c: re.compile(c, re.IGNORECASE) for c in NUMBERS})
    assert next(x for x in got if x.series is loc).reasons == [f"SeriesDescription {description!r}: a localiser"]


@pytest.mark.parametrize("description", ["t1_mprage_sag_p2_iso", "Ax T2 FLAIR", "sT1W_3D_TFE", "AX T1 SE +C",
                                         "T2 BLADE", "COR T1 POST", "FLAIR_LONG_TR", "t2_tse_dark-fluid_tra",
                                         "Ax 3D BRAVO", "t1_se_tra_Gd", "T2W_TSE", "Clinical T1 block"])
def test_contrast_series_names_are_not_localisers(description):
    assert not LOCALISER_DESCRIPTION.search(description)


def test_a_protocol_name_never_makes_every_series_a_localiser(studies, tmp_path):
    """Without SeriesDescription (de-identified data) the description falls back to ProtocolName,
    which GE writes for the whole exam ("BRAIN TUMOR PILOT"): it must not leave every series out."""
    root = shutil.copytree(studies, tmp_path / "dcm")
    for f in (root / "dicom" / "SUBJ006").rglob("IM*"):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription, ds.ProtocolName = "", "BRAIN TUMOR PILOT"
        ds.save_as(f)
    ref = next(r for r in make_source("dicom", str(root)).cases() if r.name == "SUBJ006")
    assert {c for c, *_ in ref.identification} == set(NUMBERS), ref.problems


def test_predict_fails_an_ambiguous_study_alone_and_refuses_a_folder_without_a_case(studies, tmp_path):
    """An ambiguous study has no files chosen: it fails alone with its problem (was an IndexError
    while listing the cases); an unreadable file beside the studies is a failed entry of the batch
    (was a warning and an exit 0); a folder whose DICOM files cannot be read is an error that says
    so (was an exit 0 with no case)."""
    from medseg.errors import InvalidCase, MedsegError
    from medseg.inference.datasets import dicom_inputs

    root = shutil.copytree(studies, tmp_path / "dcm")
    post = next((root / "dicom" / "SUBJ006").glob("*/SE004"))
    for f in post.iterdir():  # two T1 without an agent: an ambiguity
        ds = pydicom.dcmread(f)
        del ds.ContrastBolusAgent, ds.ContrastBolusRoute
        ds.save_as(f)
    for series in ("SE002", "SE005"):  # and no FLAIR, no T2: no file is left to the case
        shutil.rmtree(post.parent / series)
    (root / "dicom" / "stray.dcm").write_bytes(b"\0" * 400)  # an unreadable file beside the studies
    items = {i.name: i for i in dicom_inputs(root, list(NUMBERS))}
    assert len(items) == len(DICOM_STYLES) + 1
    with pytest.raises(MedsegError, match=r"stray.dcm: not a readable DICOM file"):  # a failed entry of the batch
        items["unreadable-file-1"].load()
    bad = items["SUBJ006"]
    assert bad.path.is_dir() and bad.path.is_relative_to(post.parent) and not bad.dicom_series  # its problem names it
    with pytest.raises(InvalidCase, match="2 series are candidates"):
        bad.load()
    assert items["SUBJ001"].load()[0].shape[0] == 4

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"\0" * 400)
    with pytest.raises(DataError, match=r"junk: no case to predict: 1 file\(s\) could not be read, such as .*a.dcm: "
                                        r"not a readable DICOM file"):
        dicom_inputs(junk, list(NUMBERS))


def test_what_a_folder_without_a_case_holds_is_said(tmp_path, caplog):
    """Three reasons, three messages: no DICOM file at all, DICOM files without an image (an
    RTSTRUCT), and a study whose series are none of the channels (a localiser alone: also logged)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"empty: no DICOM file under it$"):
        make_source("dicom", str(empty)).cases()
    rt = tmp_path / "rt"
    rt.mkdir()
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "rtstruct.dcm", rt)
    with pytest.raises(DataError, match=r"rt: no DICOM image series under it"):
        make_source("dicom", str(rt)).cases()
    root = write_dicom_dataset(tmp_path / "dcm", SynthConfig(n=1, spacing=12.0, fov_mm=(96.0, 108.0, 84.0)),
                               workers=1, styles=("none",))
    for series in (root / "dicom").glob("*/*/SE00[2-5]"):
        shutil.rmtree(series)
    with caplog.at_level(logging.WARNING, logger="medseg.data.sources.dicom"), pytest.raises(DataError):
        make_source("dicom", str(root)).cases()
    assert "left out: no series is identified as any of the channels" in caplog.text
