"""DICOM reading: series in every orientation against the source volume and SimpleITK, enhanced
multi-frame files, the real samples shipped with pydicom, radiographs, and every refusal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from medseg.data.io.dicom import read_radiograph, read_series
from medseg.data.io.dicom_write import new_ids, write_radiograph, write_series
from medseg.errors import DataError

sitk = pytest.importorskip("SimpleITK")

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: dcm2niix from the system, or from the test extra's wheel in the venv
DCM2NIIX = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))


def _affine(rotation: np.ndarray, spacing, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = rotation @ np.diag(spacing)
    a[:3, 3] = origin
    return a


# voxel -> RAS directions of typical acquisitions (columns: voxel axes i, j, k)
ORIENTATIONS = {
    # axial as scanners store it: columns run R->L, rows A->P, slices I->S
    "axial": np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, 1]]),
    # sagittal: columns A->P... rows S->I, slices R->L (normal antiparallel to the slice order)
    "sagittal": np.array([[0.0, 0, -1], [-1, 0, 0], [0, -1, 0]]),
    # coronal: columns R->L, rows S->I, slices P->A
    "coronal": np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "oblique": Rotation.from_euler("xyz", [17, -23, 31], degrees=True).as_matrix(),
}


def _volume(shape=(12, 10, 7), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2000, size=shape).astype(np.float32)


def _sitk_grid(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)  # (k, j, i) -> (i, j, k)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return arr, np.diag([-1.0, -1, 1, 1]) @ lps


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_series_matches_source_and_simpleitk(tmp_path, orientation):
    data = _volume()
    affine = _affine(ORIENTATIONS[orientation], (0.9, 1.1, 2.5), (40.0, -30.0, 12.0))
    files = write_series(data, affine, tmp_path / "s", new_ids("P", "T1", 1), seed=3)
    vol = read_series(files, max_voxels=10**8)
    # slices come back sorted along the normal: same voxels, possibly the slice axis reversed
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    expected, expected_affine = data, affine
    if normal @ affine[:3, 2] < 0:
        expected = data[:, :, ::-1]
        expected_affine = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, data.shape[2] - 1],
                                             [0, 0, 0, 1.0]])
    np.testing.assert_allclose(vol.affine, expected_affine, atol=1e-4)
    step = (data.max() - data.min()) / 65535
    np.testing.assert_allclose(vol.data, expected, atol=step)
    sitk_data, sitk_affine = _sitk_grid(tmp_path / "s")
    np.testing.assert_allclose(vol.affine, sitk_affine, atol=1e-4)
    np.testing.assert_allclose(vol.data, sitk_data, atol=1e-3)


def test_enhanced_multiframe_and_implicit_vr_match_classic(tmp_path):
    data = _volume(seed=1)
    affine = _affine(ORIENTATIONS["oblique"], (1.0, 1.0, 3.0), (0.0, 5.0, -7.0))
    classic = read_series(write_series(data, affine, tmp_path / "c", new_ids("P", "T1", 1)), 10**8)
    enhanced = read_series(write_series(data, affine, tmp_path / "e", new_ids("P", "T1", 2), enhanced=True), 10**8)
    implicit = read_series(write_series(data, affine, tmp_path / "i", new_ids("P", "T1", 3), implicit_vr=True),
                           10**8)
    for other in (enhanced, implicit):
        np.testing.assert_allclose(other.affine, classic.affine, atol=1e-6)
        np.testing.assert_array_equal(other.data, classic.data)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")
def test_series_matches_dcm2niix(tmp_path):
    import nibabel as nib

    data = _volume(seed=2)
    affine = _affine(ORIENTATIONS["oblique"], (0.9, 1.1, 2.5), (4.0, -3.0, 1.0))
    files = write_series(data, affine, tmp_path / "s", new_ids("P", "T1", 1))
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "out", "-o", str(tmp_path), str(tmp_path / "s")],
                   check=True, capture_output=True)
    img = nib.load(tmp_path / "out.nii")
    ours = read_series(files, 10**8)
    from medseg.data.io.nifti import to_ras

    a, aa, _ = to_ras(ours.data, ours.affine)
    b, ba, _ = to_ras(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    np.testing.assert_allclose(aa, ba, atol=1e-3)
    np.testing.assert_allclose(a, b, atol=(data.max() - data.min()) / 65535 + 1e-3)


def test_pydicom_mr_and_ct_samples_have_correct_spacing():
    mr = read_series([PYDICOM_FILES / "MR_small.dcm"], 10**8)
    assert mr.data.shape == (64, 64, 1)
    np.testing.assert_allclose(np.linalg.norm(mr.affine[:3, :3], axis=0), [0.3125, 0.3125, 0.8])
    ct = read_series([PYDICOM_FILES / "CT_small.dcm"], 10**8)
    np.testing.assert_allclose(np.linalg.norm(ct.affine[:3, :3], axis=0)[:2], [0.661468, 0.661468])
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    raw = ds.pixel_array.astype(np.float32).T
    np.testing.assert_allclose(ct.data[:, :, 0], raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_pydicom_ct_series_spacing_from_positions_matches_simpleitk(tmp_path):
    folder = PYDICOM_FILES / "dicomdirtests" / "77654033" / "CT2"
    files = sorted(folder.iterdir())
    # the shipped series holds one slice 202.5 mm away from the other three: not one volume
    with pytest.raises(DataError, match=r"missing slice\(s\): gap of 202.500 mm"):
        read_series(files, 10**8)
    contiguous = tmp_path / "ct"
    contiguous.mkdir()
    for f in files:
        if float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) > 0:
            shutil.copy(f, contiguous / f.name)
    vol = read_series(sorted(contiguous.iterdir()), 10**8)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [0.488281, 0.488281, 1.25], atol=1e-5)
    sitk_data, sitk_affine = _sitk_grid(contiguous)
    np.testing.assert_allclose(vol.affine, sitk_affine, atol=1e-4)
    np.testing.assert_allclose(vol.data, sitk_data, atol=1e-3)


def test_pydicom_cr_samples_monochrome1_and_imager_spacing():
    path = PYDICOM_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"
    rad = read_radiograph(path)
    ds = pydicom.dcmread(path)
    assert rad.photometric == "MONOCHROME1" and rad.spacing_source == "ImagerPixelSpacing"
    assert rad.spacing == (0.1, 0.1)
    assert rad.data.shape == (ds.Columns, ds.Rows)
    raw = ds.pixel_array.astype(np.float32).T
    # inverted: the brightest stored pixel becomes the darkest
    assert np.argmax(raw) == np.argmin(rad.data) and np.argmin(raw) == np.argmax(rad.data)


def test_radiograph_round_trip_with_magnification_and_window(tmp_path):
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20)
    for mono1 in (False, True):
        p = write_radiograph(image, tmp_path / f"x{mono1}.dcm", new_ids("P", "AP", 1), spacing=(0.22, 0.22),
                             spacing_tag="ImagerPixelSpacing", magnification=1.1, monochrome1=mono1,
                             window=(300.0, 600.0))
        rad = read_radiograph(p)
        np.testing.assert_allclose(rad.spacing, (0.2, 0.2))
        np.testing.assert_allclose(rad.data - rad.data.min(), image - image.min(), atol=0.01)
        windowed = read_radiograph(p, voi_lut=True)
        assert windowed.data.shape == image.shape and np.ptp(windowed.data) > 0


# --- refusals --------------------------------------------------------------------------------

def _series(tmp_path, n=8, **kw) -> list[Path]:
    return write_series(_volume((6, 5, n)), _affine(np.eye(3), (1, 1, 2), (0, 0, 0)), tmp_path / "s",
                        new_ids("P", "T1", 1), **kw)


def _slice_pos(files: list[Path]) -> dict[float, Path]:
    return {float(pydicom.dcmread(f).ImagePositionPatient[2]): f for f in files}


def test_refuses_duplicated_slice_position(tmp_path):
    files = _series(tmp_path)
    by_z = _slice_pos(files)
    ds = pydicom.dcmread(by_z[6.0])
    ds.ImagePositionPatient = [0, 0, 4.0]
    ds.save_as(by_z[6.0])
    with pytest.raises(DataError, match="duplicated slice position 4.000 mm"):
        read_series(files, 10**8)


def test_refuses_missing_slice(tmp_path):
    files = _series(tmp_path)
    gone = _slice_pos(files)[6.0]
    gone.unlink()
    with pytest.raises(DataError, match=r"missing slice\(s\): gap of 4.000 mm .* \(1 slice\(s\) missing\)"):
        read_series([f for f in files if f != gone], 10**8)


def test_refuses_uneven_gaps(tmp_path):
    files = _series(tmp_path)
    f = _slice_pos(files)[6.0]
    ds = pydicom.dcmread(f)
    ds.ImagePositionPatient = [0, 0, 6.7]
    ds.save_as(f)
    with pytest.raises(DataError, match="uneven slice gaps"):
        read_series(files, 10**8)


def test_refuses_mixed_orientations(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(files[3])
    with pytest.raises(DataError, match=f"{files[3].name}: mixed orientations in one series"):
        read_series(files, 10**8)
    # the real localiser series shipped with pydicom mixes orientations too
    folder = PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR2"
    with pytest.raises(DataError, match="mixed orientations"):
        read_series(sorted(folder.iterdir()), 10**8)


def test_refuses_gantry_tilt(tmp_path):
    files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [0, 0.3 * z, z]  # positions drift along y: a tilted gantry
        ds.save_as(f)
    with pytest.raises(DataError, match="gantry tilt"):
        read_series(files, 10**8)


def test_refuses_compressed_without_decoder():
    from pydicom.pixels import get_decoder

    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(uid).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(DataError, match=r"MR_small_jpeg_ls_lossless.dcm: pixel data is compressed \(JPEG-LS "
                                        r"Lossless Image Compression\) and no decoder is installed; install one of: "
                                        r".*pylibjpeg"):
        read_series([path], 10**8)


def test_refuses_truncated_and_non_dicom(tmp_path):
    with pytest.raises(DataError, match="MR_truncated.dcm: pixel data cannot be decoded"):
        read_series([PYDICOM_FILES / "MR_truncated.dcm"], 10**8)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 50)
    with pytest.raises(DataError, match="junk.dcm: not a readable DICOM file"):
        read_series([junk], 10**8)


def test_refuses_series_over_budget_before_decoding(tmp_path):
    files = _series(tmp_path)
    with pytest.raises(DataError, match=r"series of 8 slices of 5x6 \(240 voxels\) exceeds the budget of 100"):
        read_series(files, max_voxels=100)


# --- the spacing rule of single-slice series -------------------------------------------------

@pytest.mark.parametrize("between, thickness, expected", [(4.0, 3.0, 4.0), (None, 3.0, 3.0), (5.0, None, 5.0),
                                                          (None, None, 1.0)])
@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
def test_single_slice_step_is_spacing_between_slices_then_thickness(tmp_path, between, thickness, expected,
                                                                    enhanced):
    """One slice has no neighbour: SpacingBetweenSlices, then SliceThickness, then 1 mm (dcm2niix's rule).
    SimpleITK agrees whenever SpacingBetweenSlices is present and otherwise says 1 mm."""
    files = write_series(_volume((8, 6, 1)), _affine(np.eye(3), (1, 1, 2), (0, 0, 0)), tmp_path / "s",
                         new_ids("P", "T1", 1), enhanced=enhanced)
    ds = pydicom.dcmread(files[0])
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0] if enhanced else ds
    for keyword, value in (("SpacingBetweenSlices", between), ("SliceThickness", thickness)):
        if keyword in measures:
            delattr(measures, keyword)
        if value is not None:
            setattr(measures, keyword, value)
    ds.save_as(files[0])
    vol = read_series(files, 10**8)
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [1.0, 1.0, expected])
    img = sitk.ReadImage(str(files[0]))
    assert img.GetSpacing()[2] == pytest.approx(expected if between is not None else 1.0)
    if DCM2NIIX is not None:
        import nibabel as nib

        subprocess.run([DCM2NIIX, "-z", "n", "-f", "out", "-o", str(tmp_path), str(tmp_path / "s")],
                       check=True, capture_output=True)
        assert nib.load(tmp_path / "out.nii").header.get_zooms()[2] == pytest.approx(expected)


# --- headers as real files write them (found by feeding every pydicom / pydicom-data sample to predict) --

@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom's own word on the same value
def test_a_malformed_header_value_is_refused_naming_the_file():
    """pydicom's badVR.dcm: NumberOfFrames '1A' (IS). Was a raw ValueError from int()."""
    from medseg.data.io.dicom import scan, series_geometry

    path = PYDICOM_FILES / "badVR.dcm"
    with pytest.raises(DataError, match=r"badVR.dcm: malformed DICOM header \(ValueError: .*'1A'"):
        series_geometry([path], 10**9)
    with pytest.raises(DataError, match=r"badVR.dcm: malformed DICOM header"):
        read_series([path], 10**9)
    series, problems = scan([path])  # headers alone: grouped, no crash
    assert len(series) == 1 and not problems


def test_a_zero_pixel_spacing_is_refused_and_a_radiograph_falls_back_to_the_imager_spacing(tmp_path):
    """CR readers write PixelSpacing 0\\0 for "not calibrated" (pydicom-data's RG1_UNCI.dcm): a
    radiograph then takes ImagerPixelSpacing, or is refused without one (was an OrientationError from
    a zero affine); a series slice with a zero spacing is refused naming the file."""
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20)
    p = write_radiograph(image, tmp_path / "cr.dcm", new_ids("P", "AP", 1), spacing=(0.2, 0.2),
                         spacing_tag="ImagerPixelSpacing")
    ds = pydicom.dcmread(p)
    ds.PixelSpacing = [0, 0]
    ds.save_as(p)
    rad = read_radiograph(p)
    assert rad.spacing == (0.2, 0.2) and rad.spacing_source == "ImagerPixelSpacing"
    del ds.ImagerPixelSpacing
    ds.save_as(p)
    with pytest.raises(DataError, match=r"cr.dcm: PixelSpacing is 0\\0 and there is no ImagerPixelSpacing"):
        read_radiograph(p)
    ds.PixelSpacing = [0.2, -0.2]
    ds.save_as(p)
    with pytest.raises(DataError, match=r"cr.dcm: PixelSpacing 0.2\\-0.2 is not a pixel size"):
        read_radiograph(p)
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.PixelSpacing = [0, 0]
    ds.save_as(files[3])
    with pytest.raises(DataError, match=rf"{files[3].name}: PixelSpacing 0\\0 is not a pixel size"):
        read_series(files, 10**8)


def test_a_file_without_the_part10_header_is_read_in_the_encoding_detected(tmp_path):
    """A bare data set (no preamble, no DICM, no file meta), as some older exports write slices,
    builds the same volume as the Part 10 files it was written from."""
    files = _series(tmp_path)
    reference = read_series(files, 10**8)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
        ds.save_as(f, enforce_file_format=False, implicit_vr=True, little_endian=True)
        assert f.read_bytes()[128:132] != b"DICM"
    bare = read_series(files, 10**8)
    np.testing.assert_array_equal(bare.data, reference.data)
    np.testing.assert_allclose(bare.affine, reference.affine)


def test_an_undecodable_file_is_one_error_without_pydicom_s_tracebacks(caplog):
    """pydicom logs each decoding plugin's failure with its traceback before raising; medseg's
    one-line error says it all (JPEG-lossy.dcm: 12-bit JPEG Extended, which Pillow cannot decode)."""
    import logging

    path = PYDICOM_FILES / "JPEG-lossy.dcm"
    with caplog.at_level(logging.DEBUG):
        try:
            read_radiograph(path)
        except DataError as e:
            assert str(e).startswith(f"{path}: pixel data cannot be decoded") and "\n" not in str(e)
        else:
            pytest.skip("a decoder for 12-bit JPEG Extended is installed")
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= logging.ERROR]



def test_bare_data_sets_are_found_by_their_first_element_and_other_files_are_not_forced(tmp_path):
    """scan finds a bare data set without a DICOM suffix by its first element (group 0008); a
    ``.dcm`` file that is neither Part 10 nor a data set is refused at once, not parsed with force,
    and a README or a PNG is no DICOM file."""
    from medseg.data.io.dicom import looks_like_dicom, scan

    files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
        f.unlink()
        ds.save_as(f.parent / f"bare{f.name}", enforce_file_format=False, implicit_vr=False, little_endian=True)
    junk = tmp_path / "s" / "zeros.dcm"
    junk.write_bytes(b"\0" * 4096)
    (tmp_path / "s" / "README").write_text("DICOM files of one series\n")
    (tmp_path / "s" / "mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    found = sorted((tmp_path / "s").iterdir())
    series, problems = scan(found)
    assert len(series) == 1 and len(series[0].files) == len(files)
    assert problems == [f"{junk}: not a readable DICOM file (InvalidDicomError: File is missing DICOM File Meta "
                        f"Information header or the 'DICM' prefix is missing from the header. Use force=True to "
                        f"force reading.)"]
    assert not looks_like_dicom(tmp_path / "s" / "README") and not looks_like_dicom(tmp_path / "s" / "mask.png")
    assert read_series(series[0].files, 10**8).data.shape == (6, 5, len(files))


def test_a_series_with_an_unreadable_header_fails_with_it(tmp_path, monkeypatch):
    """A file whose header cannot be parsed while the series is grouped is not dropped from it
    unnoticed (a volume one slice short): the series carries the problem."""
    from medseg.data.io import dicom

    files = sorted(_series(tmp_path))
    real = dicom.acquisition_attributes

    def first_is_malformed(ds):
        if str(ds.SOPInstanceUID) == str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID):
            raise ValueError("invalid literal for float(): '3,5'")
        return real(ds)

    monkeypatch.setattr(dicom, "acquisition_attributes", first_is_malformed)
    series, problems = dicom.scan(files)
    assert len(series) == 1 and files[0] not in series[0].files
    assert series[0].problems == problems == [f"{files[0]}: malformed DICOM header (ValueError: invalid literal for "
                                              f"float(): '3,5')"]
    from medseg.data.sources import make_source

    ref = make_source("dicom", str(files[0].parent), channels=["T1w"]).cases()[0]  # the case fails with it
    assert ref.images and series[0].problems[0] in ref.problems


def test_the_bare_data_set_sniff_reads_both_byte_orders_and_both_vr_encodings(tmp_path):
    """The first element of a bare data set, as each encoding writes it, and what it is not."""
    from medseg.data.io.dicom import _bare_data_set

    files = _series(tmp_path, n=2)
    ds = pydicom.dcmread(files[0])
    ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
    for implicit, little in ((True, True), (False, True), (False, False)):
        out = tmp_path / f"bare_{implicit}_{little}"
        pydicom.dcmwrite(out, ds, enforce_file_format=False, implicit_vr=implicit, little_endian=little,
                         force_encoding=True)
        assert _bare_data_set(out.read_bytes()[:132]), (implicit, little)
    assert not _bare_data_set(files[0].read_bytes()[:132])  # Part 10: a preamble of zeros first
    assert not _bare_data_set(b"\x08\x00\x08\x00")  # too short to tell
    assert not _bare_data_set(b"%PDF-1.7\n" + b"\0" * 64)
