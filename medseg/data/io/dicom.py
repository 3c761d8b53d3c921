"""DICOM reading: MR/CT series into volumes, radiographs (CR/DX) into 2D images.

Volumes come back in the same convention as NIfTI: an array ``(X, Y, Z)`` with X the column
index, Y the row index and Z the slice index (sorted along the slice normal), and a 4x4 affine
from voxel indices to RAS+ mm. DICOM's patient coordinates are LPS, so the affine is
``diag(-1, -1, 1, 1) @ lps_affine``; this is the same grid SimpleITK and dcm2niix build.

Geometry of a series (single-frame files or one enhanced multi-frame file):

- every slice must share ImageOrientationPatient (within 1e-4), Rows, Columns and PixelSpacing;
- slices are sorted by ``ImagePositionPatient · (row × column direction)``; the slice step
  (and so the spacing along Z) comes from the positions, never from SliceThickness;
- a single-slice series has no second position, so its step along the normal is
  SpacingBetweenSlices, then SliceThickness, then 1 mm (the first positive one; for enhanced
  files, from the Pixel Measures functional group). This is dcm2niix's rule; SimpleITK (GDCM) also
  takes SpacingBetweenSlices first but then falls back to 1 mm, ignoring SliceThickness: we keep
  SliceThickness, the only measured extent of the slice, rather than an arbitrary 1 mm;
- duplicated positions, missing slices, uneven gaps beyond ``gap_tol_mm`` and positions that do
  not lie on the slice normal (gantry tilt) are refused with a message naming the file;
- RescaleSlope/RescaleIntercept are applied per slice (per frame for enhanced MR);
- compressed transfer syntaxes are decoded only when a decoder is installed; otherwise the error
  names the packages to install;
- a file without the Part 10 header (no preamble and ``DICM``, as some older exports write it) is
  read as a bare data set in the encoding pydicom detects; a header value that cannot be what its
  attribute says (``NumberOfFrames`` ``1A``, a PixelSpacing of 0) is refused naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medseg.errors import DataError

# pydicom logs each decoding plugin's failure with its traceback, then raises one RuntimeError that
# lists them all, which medseg reports as the file's one-line error: the tracebacks are dropped
logging.getLogger("pydicom.pixels.decoders.base").addFilter(lambda record: record.levelno < logging.ERROR)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
ORIENTATION_TOL = 1e-4
#: SOP classes that hold no image (directories, reports, segmentations are not inputs).
_NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "PR", "KO", "REG", "DOC"}


@dataclass
class SeriesInfo:
    """One DICOM series found on disk (headers only)."""

    study_uid: str
    series_uid: str
    patient_id: str
    study_date: str
    description: str
    modality: str
    frame_of_reference: str
    files: list[Path] = field(default_factory=list)
    series_number: int = 0
    #: acquisition attributes of the series' first file (:func:`acquisition_attributes`)
    acquisition: dict[str, Any] = field(default_factory=dict)
    #: files of the series whose header could not be read (a case that chooses it fails with them)
    problems: list[str] = field(default_factory=list)


def dcmread(path: Path, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread``, also of a bare data set without the Part 10 header (no preamble, no
    ``DICM``; :func:`_bare_data_set` tells it from other files by its first element): read with
    ``force`` in the encoding pydicom detects, which becomes the transfer syntax that the pixel
    decoders need."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if not _bare_data_set(_head(path)):
            raise
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


@contextmanager
def malformed_header(path: Path) -> Iterator[None]:
    """Turn a header value that cannot be what its attribute says (``int('1A')``, a missing
    sequence item) into a :class:`DataError` naming ``path``."""
    try:
        yield
    except (ValueError, TypeError, IndexError, OverflowError) as e:  # a value that does not parse, a short list
        raise DataError(path, f"malformed DICOM header ({type(e).__name__}: {e})") from e


def _spacing(path: Path, value: Any, tag: str) -> tuple[float, float]:
    """A two-value spacing attribute as positive finite millimetres."""
    pair = (float(value[0]), float(value[1]))
    if not all(np.isfinite(v) and v > 0 for v in pair):
        raise DataError(path, f"{tag} {pair[0]:g}\\{pair[1]:g} is not a pixel size (mm, positive)")
    return pair


def read_header(path: Path) -> Dataset:
    """Read a DICOM file's header (no pixel data), refusing unreadable or truncated files."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - corrupt bytes raise struct.error, NotImplementedError, pydicom's own ...
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "SOPClassUID" not in ds and "DirectoryRecordSequence" not in ds:
        raise DataError(path, "not a readable DICOM file (no SOPClassUID: truncated or corrupt header)")
    return ds


def scan(files: Sequence[Path]) -> tuple[list[SeriesInfo], list[str]]:
    """Group DICOM files by study and series (headers only).

    Files that are not DICOM at all (no ``DICM`` preamble, e.g. notes or DICOMDIR indexes) are
    ignored; files that claim to be DICOM but cannot be read are reported.

    Returns:
        ``(series, problems)``; series are sorted by study, then series number.
    """
    series: dict[str, SeriesInfo] = {}
    numbers: dict[str, int] = {}
    broken: dict[str, list[str]] = {}
    problems = []
    for path in files:
        if not looks_like_dicom(path):
            continue
        try:
            ds = read_header(path)
        except DataError as e:
            problems.append(str(e))
            continue
        if _is_index(ds):
            continue  # a DICOMDIR index
        if "SOPClassUID" not in ds:  # pydicom reads truncated or garbage headers without complaint
            problems.append(f"{path}: not a readable DICOM file (no SOPClassUID: truncated or corrupt header)")
            continue
        if not _holds_image(ds):
            continue  # structured reports, segmentations, RT objects, ...
        if "SeriesInstanceUID" not in ds:
            problems.append(f"{path}: image without SeriesInstanceUID")
            continue
        uid = str(ds.SeriesInstanceUID)
        info = series.get(uid)
        if info is None:
            try:
                with malformed_header(path):
                    info = SeriesInfo(
                        study_uid=str(ds.get("StudyInstanceUID", "")), series_uid=uid,
                        patient_id=str(ds.get("PatientID", "") or "anonymous"),
                        study_date=str(ds.get("StudyDate", "")),
                        description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "")),
                        modality=str(ds.get("Modality", "")),
                        frame_of_reference=str(ds.get("FrameOfReferenceUID", "")),
                        series_number=_int(ds.get("SeriesNumber", 0)), acquisition=acquisition_attributes(ds))
            except DataError as e:  # the series must not lose a slice unnoticed: it fails with this file
                problems.append(str(e))
                broken.setdefault(uid, []).append(str(e))
                continue
            series[uid] = info
            numbers[uid] = info.series_number
        info.files.append(path)
    for uid, messages in broken.items():
        if uid in series:
            series[uid].problems.extend(messages)
    ordered = sorted(series.values(), key=lambda s: (s.study_uid, numbers[s.series_uid], s.series_uid))
    return ordered, problems


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _number(value: Any) -> float | None:
    """A numeric attribute value (the first of a multi-valued one), ``None`` when absent or unparsable."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _strings(value: Any) -> list[str]:
    """A code-string attribute as a list of upper-case values."""
    if value is None or value == "":
        return []
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip().upper() for v in values if str(v).strip()]


def acquisition_attributes(ds: Dataset) -> dict[str, Any]:
    """The attributes that identify a series' contrast, from a classic or an enhanced MR header.

    Classic MR images hold them at the top level; enhanced ones in functional groups (the first
    frame's, then the shared ones): MRTimingAndRelatedParametersSequence (RepetitionTime),
    MREchoSequence (EffectiveEchoTime), MRModifierSequence (InversionRecovery, InversionTimes),
    MRImageFrameTypeSequence (FrameType, AcquisitionContrast). Times are in ms; absent values are
    ``None`` (numbers) or empty lists/strings.
    """
    frame = (ds.get("PerFrameFunctionalGroupsSequence") or [None])[0]

    def grouped(seq: str, attr: str) -> Any:
        return _first(ds, frame, seq, attr) if "SharedFunctionalGroupsSequence" in ds or frame else None

    inversion = ds.get("InversionTime")
    if inversion is None:
        inversion = grouped("MRModifierSequence", "InversionTimes")
    image_type = _strings(ds.get("ImageType")) or _strings(grouped("MRImageFrameTypeSequence", "FrameType"))
    return {
        "ImageType": image_type,
        "ScanningSequence": _strings(ds.get("ScanningSequence")),
        "SequenceVariant": _strings(ds.get("SequenceVariant")),
        "EchoPulseSequence": str(ds.get("EchoPulseSequence", "") or "").upper(),
        "InversionRecovery": str(grouped("MRModifierSequence", "InversionRecovery") or "").upper(),
        "AcquisitionContrast": str(ds.get("AcquisitionContrast", "")
                                   or grouped("MRImageFrameTypeSequence", "AcquisitionContrast") or "").upper(),
        "RepetitionTime": _number(ds.get("RepetitionTime")
                                  or grouped("MRTimingAndRelatedParametersSequence", "RepetitionTime")),
        "EchoTime": _number(ds.get("EchoTime") or grouped("MREchoSequence", "EffectiveEchoTime")),
        "InversionTime": _number(inversion),
        "ContrastBolusAgent": _agent(ds),
        "ContrastBolusRoute": str(ds.get("ContrastBolusRoute", "") or "").strip(),
        "SeriesTime": str(ds.get("SeriesTime", "") or ds.get("AcquisitionTime", "") or "").strip(),
        "MRAcquisitionType": str(ds.get("MRAcquisitionType", "") or "").upper(),
        "SeriesDescription": str(ds.get("SeriesDescription", "") or "").strip(),
    }


def _agent(ds: Dataset) -> str:
    """ContrastBolusAgent, or the code meaning of an enhanced image's ContrastBolusAgentSequence."""
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if not agent and ds.get("ContrastBolusAgentSequence"):
        item = ds.ContrastBolusAgentSequence[0]
        agent = str(item.get("CodeMeaning", "") or item.get("CodeValue", "") or "").strip()
    return agent


def _head(path: Path) -> bytes:
    """The first 132 bytes of a file (fewer for a shorter one; none when unreadable)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def _bare_data_set(head: bytes) -> bool:
    """A data set without the Part 10 header starts with an element of group 0x0008 (the first one
    a composite object has, e.g. SpecificCharacterSet or ImageType; dcmtk sniffs the same way),
    in little or big endian, with an explicit VR of two capital letters or an implicit length."""
    if len(head) < 8:
        return False
    if head[:2] not in (b"\x08\x00", b"\x00\x08"):
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    length = int.from_bytes(head[4:8], "little" if head[:2] == b"\x08\x00" else "big")
    return explicit or length < 2**16


def looks_like_dicom(path: Path) -> bool:
    """A Part 10 file (``DICM`` after the 128-byte preamble), a bare data set (:func:`_bare_data_set`)
    or a ``.dcm``/``.dicom``/``.ima`` name."""
    head = _head(path)
    return (len(head) == 132 and head[128:132] == b"DICM" or _bare_data_set(head)
            or path.suffix.lower() in {".dcm", ".dicom", ".ima"})


def is_dicom_image(path: Path) -> bool:
    """A readable DICOM file that holds an image (not a DICOMDIR index, a segmentation, a
    structured report, an RT object, ...): what :func:`scan` would make a series of."""
    if not looks_like_dicom(path):
        return False
    try:
        ds = read_header(path)
    except DataError:
        return False
    return not _is_index(ds) and _holds_image(ds)


def _is_index(ds: Dataset) -> bool:
    """A DICOMDIR (Media Storage Directory) index."""
    return str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY


def _holds_image(ds: Dataset) -> bool:
    """Pixel rows and not a segmentation, report, RT or presentation object."""
    return "Rows" in ds and str(ds.get("Modality", "")) not in _NON_IMAGE_MODALITIES


def check_decodable(ds: Dataset, path: Path) -> None:
    """Refuse compressed pixel data that no installed decoder can read (naming the packages)."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None or not uid.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError as e:
        raise DataError(path, f"pixel data uses the transfer syntax {uid.name}, which pydicom cannot decode") from e
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies)
        raise DataError(path, f"pixel data is compressed ({uid.name}) and no decoder is installed; "
                              f"install one of: {needs}")


@dataclass
class _Slice:
    path: Path
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    thickness: float | None
    spacing_between: float | None = None

    @property
    def single_slice_step(self) -> float:
        """Step along the normal of a one-slice series (see the module docstring)."""
        return next((abs(v) for v in (self.spacing_between, self.thickness) if v), 1.0)


def _first(ds: Dataset, frame: Dataset | None, seq: str, attr: str) -> Any:
    """An attribute of an enhanced multi-frame file: per-frame group first, then shared group."""
    for group in (frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if group is not None and seq in group and len(group[seq].value) and attr in group[seq][0]:
            return group[seq][0][attr].value
    return None


def _slices_of(ds: Dataset, path: Path) -> list[_Slice]:
    """Geometry of every image plane in one file (one for classic, N for enhanced multi-frame)."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        out = []
        for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            ipp = _first(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
            iop = _first(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _first(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
            if ipp is None or iop is None or ps is None:
                raise DataError(path, f"frame {i + 1} has no plane position, orientation or pixel spacing")
            slope = _first(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _first(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
            thick = _first(ds, frame, "PixelMeasuresSequence", "SliceThickness")
            between = _first(ds, frame, "PixelMeasuresSequence", "SpacingBetweenSlices")
            out.append(_Slice(path, i, np.asarray(ipp, float), np.asarray(iop, float),
                              _spacing(path, ps, "PixelSpacing"), float(slope if slope is not None else 1),
                              float(icpt if icpt is not None else 0), float(thick) if thick else None,
                              float(between) if between else None))
        return out
    if n_frames > 1:
        raise DataError(path, f"multi-frame file ({n_frames} frames) without per-frame geometry")
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds or ds[tag].value is None or len(ds[tag].value) == 0:
            raise DataError(path, f"no {tag}: not a slice of a volume")
    thick, between = ds.get("SliceThickness"), ds.get("SpacingBetweenSlices")
    return [_Slice(path, None, np.asarray(ds.ImagePositionPatient, float), np.asarray(ds.ImageOrientationPatient, float),
                   _spacing(path, ds.PixelSpacing, "PixelSpacing"),
                   float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
                   float(thick) if thick else None, float(between) if between else None)]


@dataclass
class DicomVolume:
    """A volume built from a series: ``data`` ``(X, Y, Z)``, ``affine`` voxel -> RAS mm."""

    data: np.ndarray
    affine: np.ndarray
    files: list[Path]


def series_geometry(files: Sequence[Path], max_voxels: int, gap_tol_mm: float = 0.01
                    ) -> tuple[list[_Slice], np.ndarray, tuple[int, int], list[Dataset]]:
    """Sort a series' planes and build its affine from headers alone (no pixel data decoded).

    Returns:
        ``(slices sorted along the normal, RAS affine, (rows, columns), headers)``.

    Raises:
        DataError: on any of the refusals listed in the module docstring.
    """
    headers = [read_header(f) for f in files]
    slices: list[_Slice] = []
    shape = None
    for ds, f in zip(headers, files):
        check_decodable(ds, f)
        with malformed_header(f):
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise DataError(f, f"colour image (SamplesPerPixel={ds.SamplesPerPixel}); expected greyscale")
            rc = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
            if shape is None:
                shape = rc
            elif rc != shape:
                raise DataError(f, f"image size {rc[0]}x{rc[1]} differs from {shape[0]}x{shape[1]} of {files[0].name}")
            slices.extend(_slices_of(ds, f))
    if shape is None or 0 in shape:
        raise DataError(files[0], "no image rows/columns")
    n_voxels = shape[0] * shape[1] * len(slices)
    if n_voxels > max_voxels:
        raise DataError(files[0], f"series of {len(slices)} slices of {shape[0]}x{shape[1]} "
                                  f"({n_voxels} voxels) exceeds the budget of {max_voxels} voxels")
    iop0 = slices[0].orientation
    for s in slices[1:]:
        if np.abs(s.orientation - iop0).max() > ORIENTATION_TOL:
            raise DataError(s.path, f"mixed orientations in one series: {np.round(s.orientation, 4).tolist()} "
                                    f"vs {np.round(iop0, 4).tolist()} in {slices[0].path.name}")
        if not np.allclose(s.pixel_spacing, slices[0].pixel_spacing, atol=1e-4):
            raise DataError(s.path, f"pixel spacing {s.pixel_spacing} differs from {slices[0].pixel_spacing} "
                                    f"of {slices[0].path.name}")
    row, col = iop0[:3], iop0[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DataError(slices[0].path, f"ImageOrientationPatient {iop0.tolist()} is not two orthonormal directions")
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(s.position @ normal))
    pos = np.array([s.position @ normal for s in slices])
    step = _check_positions(slices, pos, normal, gap_tol_mm)
    dr, dc = slices[0].pixel_spacing  # PixelSpacing = (row spacing, column spacing)
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = col * dr
    lps[:3, 2] = step
    lps[:3, 3] = slices[0].position
    return slices, LPS_TO_RAS @ lps, shape, headers


def _check_positions(slices: list[_Slice], pos: np.ndarray, normal: np.ndarray, tol: float) -> np.ndarray:
    """Check slice positions; return the step vector between consecutive slices (LPS mm)."""
    if len(slices) == 1:
        return normal * slices[0].single_slice_step
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < max(tol, 1e-3))
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise DataError(b.path, f"duplicated slice position {pos[dup[0]]:.3f} mm along the normal "
                                f"(also in {_where(a)}); {dup.size} duplicate(s) in the series")
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size:
        i = int(bad[0])
        ratio = gaps[i] / step
        s = slices[i + 1]
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
            raise DataError(s.path, f"missing slice(s): gap of {gaps[i]:.3f} mm before this slice where "
                                    f"{step:.3f} mm is expected ({int(round(ratio)) - 1} slice(s) missing)")
        raise DataError(s.path, f"uneven slice gaps: {gaps.min():.3f} to {gaps.max():.3f} mm "
                                f"(tolerance {tol} mm around {step:.3f} mm)")
    origin = slices[0].position
    lateral = [np.linalg.norm((s.position - origin) - ((s.position - origin) @ normal) * normal) for s in slices]
    if max(lateral) > max(tol, 0.05):
        raise DataError(slices[int(np.argmax(lateral))].path,
                        f"slice positions leave the slice normal by up to {max(lateral):.3f} mm "
                        f"(gantry tilt or sheared series), which a voxel grid cannot represent")
    return (slices[-1].position - origin) / (len(slices) - 1)


def _where(s: _Slice) -> str:
    return s.path.name + (f" frame {s.frame + 1}" if s.frame is not None else "")


def read_series(files: Sequence[Path], max_voxels: int, gap_tol_mm: float = 0.01) -> DicomVolume:
    """Build a volume from the files of one series (see the module docstring).

    Raises:
        DataError: naming the file and the problem.
    """
    files = [Path(f) for f in files]
    slices, affine, (rows, cols), _ = series_geometry(files, max_voxels, gap_tol_mm)
    data = np.empty((cols, rows, len(slices)), dtype=np.float32)
    pixels: dict[Path, np.ndarray] = {}
    for k, s in enumerate(slices):
        if s.path not in pixels:
            pixels[s.path] = _decode(s.path, frames=s.frame is not None)
        arr = pixels[s.path] if s.frame is None else pixels[s.path][s.frame]
        if arr.shape != (rows, cols):
            raise DataError(s.path, f"pixel data of shape {arr.shape} does not match Rows x Columns {rows}x{cols}")
        data[:, :, k] = (arr.astype(np.float32) * s.slope + s.intercept).T
        if s.frame is None:
            del pixels[s.path]  # one slice per file: free it at once
    if not np.isfinite(data).all():
        raise DataError(files[0], "pixel data holds NaN or infinite values after rescaling")
    return DicomVolume(data=data, affine=affine, files=files)


def _decode(path: Path, frames: bool = False) -> np.ndarray:
    """The stored pixels of a file; with ``frames``, always ``(frames, rows, columns)`` (pydicom drops
    the frame axis of a one-frame enhanced file)."""
    try:
        ds = dcmread(path)
        arr = np.asarray(ds.pixel_array)
        return arr[None] if frames and arr.ndim == 2 else arr
    except DataError:
        raise
    except Exception as e:  # decoders raise many types on truncated/corrupt data
        raise DataError(path, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e


@dataclass
class Radiograph:
    """A 2D image: ``data`` ``(X, Y)`` (X = column, Y = row), spacing (mm) and how it was derived."""

    data: np.ndarray
    spacing: tuple[float, float]
    spacing_source: str
    photometric: str


def read_radiograph(path: Path, voi_lut: bool = False, max_voxels: int = 2**28) -> Radiograph:
    """Read a CR/DX (or any single-frame greyscale) DICOM image for display-consistent intensities.

    Modality LUT (RescaleSlope/Intercept) is applied; the VOI LUT or window when ``voi_lut``;
    MONOCHROME1 images are inverted so that higher values are always brighter. Spacing is
    PixelSpacing (calibrated at the patient) when present, else ImagerPixelSpacing divided by
    EstimatedRadiographicMagnificationFactor (1 when absent).

    Raises:
        DataError: naming the file and the problem.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = read_header(path)
    check_decodable(ds, path)
    with malformed_header(path):
        spacing, source = _radiograph_geometry(ds, path, max_voxels)
    try:
        full = dcmread(path)
        arr = apply_modality_lut(np.asarray(full.pixel_array), full).astype(np.float32)
        if voi_lut:
            arr = apply_voi_lut(arr, full).astype(np.float32)
    except Exception as e:  # decoders raise many types on truncated/corrupt data
        raise DataError(path, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        arr = float(arr.max()) + float(arr.min()) - arr
    if not np.isfinite(arr).all():
        raise DataError(path, "pixel data holds NaN or infinite values")
    # PixelSpacing is (between rows, between columns): X (columns) steps by spacing[1]
    return Radiograph(data=np.ascontiguousarray(arr.T), spacing=(spacing[1], spacing[0]),
                      spacing_source=source, photometric=photometric)


def _radiograph_geometry(ds: Dataset, path: Path, max_voxels: int) -> tuple[tuple[float, float], str]:
    """The checks of :func:`read_radiograph` on the header and the pixel size with its source: a
    PixelSpacing of zero (written by some CR readers for "not calibrated") falls back to
    ImagerPixelSpacing."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols == 0:
        raise DataError(path, "no image rows/columns")
    if rows * cols > max_voxels:
        raise DataError(path, f"image of {rows}x{cols} pixels exceeds the budget of {max_voxels} voxels")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(path, f"expected a single 2D image, got {ds.NumberOfFrames} frames")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(path, "colour image; expected a greyscale radiograph")
    calibrated = ds.get("PixelSpacing")
    if calibrated and not all(float(v) == 0 for v in calibrated):
        return _spacing(path, calibrated, "PixelSpacing"), "PixelSpacing"
    if ds.get("ImagerPixelSpacing"):
        mag = float(ds.get("EstimatedRadiographicMagnificationFactor", 1) or 1)
        if not (np.isfinite(mag) and mag > 0):
            raise DataError(path, f"EstimatedRadiographicMagnificationFactor {mag:g} is not positive")
        imager = _spacing(path, ds.ImagerPixelSpacing, "ImagerPixelSpacing")
        return (imager[0] / mag, imager[1] / mag), "ImagerPixelSpacing" + (f"/{mag:g}" if mag != 1 else "")
    if calibrated:
        raise DataError(path, "PixelSpacing is 0\\0 and there is no ImagerPixelSpacing: the pixel size is unknown")
    raise DataError(path, "no PixelSpacing or ImagerPixelSpacing: the pixel size is unknown")
