"""Write volumes and radiographs as DICOM, the ways scanners do (for built-in data and tests).

Volumes ``(X, Y, Z)`` with a voxel -> RAS affine become an MR series: one file per slice (classic
MR Image Storage, in explicit or implicit VR) or one enhanced multi-frame file (Enhanced MR Image
Storage). Intensities are stored as unsigned 16-bit integers with RescaleSlope/RescaleIntercept.
File names are shuffled, as they often are on export, so that readers must sort by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medseg.data.io.dicom import LPS_TO_RAS

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def _ds(sop_class: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def _quantise(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(data.min()), float(data.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((data - lo) / slope).astype(np.uint16)
    return stored, slope, lo


def _patient(ds: Dataset, ids: dict[str, str]) -> None:
    ds.PatientID = ids.get("patient_id", "ANON")
    ds.PatientName = ids.get("patient_id", "ANON")
    ds.StudyInstanceUID = ids["study_uid"]
    ds.SeriesInstanceUID = ids["series_uid"]
    ds.FrameOfReferenceUID = ids.get("frame_of_reference") or generate_uid()
    ds.StudyDate = ids.get("study_date", "20260101")
    ds.SeriesDescription = ids.get("description", "")
    ds.SeriesNumber = int(ids.get("series_number", 1))
    ds.Modality = ids.get("modality", "MR")


def _pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = ds.get("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def write_series(data: np.ndarray, affine: np.ndarray, out_dir: str | Path, ids: dict[str, str], *,
                 enhanced: bool = False, implicit_vr: bool = False, seed: int = 0) -> list[Path]:
    """Write a volume as one DICOM MR series.

    Args:
        data: ``(X, Y, Z)`` intensities (X = column, Y = row, Z = slice).
        affine: voxel -> RAS mm affine of ``data``.
        out_dir: folder for the files (created).
        ids: ``study_uid``, ``series_uid`` and optionally ``patient_id``, ``description``,
            ``series_number``, ``frame_of_reference``, ``study_date``, ``modality``.
        enhanced: write one Enhanced MR multi-frame file instead of one file per slice.
        implicit_vr: use the Implicit VR Little Endian transfer syntax.
        seed: shuffles the file names.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    c0, c1, c2, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    row, col = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
    iop = [float(v) for v in (*row, *col)]
    spacing = [float(np.linalg.norm(c1)), float(np.linalg.norm(c0))]
    stored, slope, intercept = _quantise(np.asarray(data, dtype=np.float64))
    nx, ny, nz = data.shape
    syntax = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    if enhanced:
        ds = _ds(ENHANCED_MR_IMAGE_STORAGE, syntax)
        _patient(ds, ids)
        ds.Rows, ds.Columns, ds.NumberOfFrames = ny, nx, nz
        shared = Dataset()
        pm = Dataset()
        pm.PixelSpacing = spacing
        pm.SliceThickness = float(np.linalg.norm(c2))
        po = Dataset()
        po.ImageOrientationPatient = iop
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        shared.PixelMeasuresSequence = DicomSequence([pm])
        shared.PlaneOrientationSequence = DicomSequence([po])
        shared.PixelValueTransformationSequence = DicomSequence([pvt])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        frames = []
        for k in range(nz):
            f = Dataset()
            pp = Dataset()
            pp.ImagePositionPatient = [float(v) for v in origin + k * c2]
            f.PlanePositionSequence = DicomSequence([pp])
            frames.append(f)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
        _pixels(ds, np.stack([stored[:, :, k].T for k in range(nz)]))
        path = out / "enhanced.dcm"
        ds.save_as(path, enforce_file_format=True)
        return [path]
    names = np.random.default_rng(seed).permutation(nz)
    paths = []
    for k in range(nz):
        ds = _ds(MR_IMAGE_STORAGE, syntax)
        _patient(ds, ids)
        ds.Rows, ds.Columns = ny, nx
        ds.ImagePositionPatient = [float(v) for v in origin + k * c2]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = spacing
        ds.SliceThickness = float(np.linalg.norm(c2))
        ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        _pixels(ds, stored[:, :, k].T)
        path = out / f"IM{int(names[k]):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_radiograph(image: np.ndarray, out_path: str | Path, ids: dict[str, str], *,
                     spacing: Sequence[float] = (0.5, 0.5), spacing_tag: str = "PixelSpacing",
                     magnification: float | None = None, monochrome1: bool = False,
                     window: tuple[float, float] | None = None, modality: str = "DX") -> Path:
    """Write a 2D image ``(X, Y)`` (X = column) as a DX or CR DICOM file.

    Args:
        image: intensities, higher = brighter.
        out_path: file to write.
        ids: ``study_uid``, ``series_uid``, optionally ``patient_id``, ``description``.
        spacing: pixel size (mm) between rows and between columns, as DICOM orders it.
        spacing_tag: ``PixelSpacing`` or ``ImagerPixelSpacing``.
        magnification: EstimatedRadiographicMagnificationFactor to record (ImagerPixelSpacing only).
        monochrome1: store inverted values with PhotometricInterpretation MONOCHROME1.
        window: optional (centre, width) VOI window.
        modality: ``DX`` or ``CR``.
    """
    ds = _ds(DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE)
    _patient(ds, {**ids, "modality": modality})
    stored, slope, intercept = _quantise(np.asarray(image, dtype=np.float64).T)
    if monochrome1:
        stored = (65535 - stored).astype(np.uint16)
        ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows, ds.Columns = stored.shape
    setattr(ds, spacing_tag, [float(s) for s in spacing])
    if magnification is not None:
        ds.EstimatedRadiographicMagnificationFactor = float(magnification)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    _pixels(ds, stored)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return Path(out_path)


def new_ids(patient_id: str, description: str, series_number: int, study_uid: str | None = None,
            frame_of_reference: str | None = None) -> dict[str, str]:
    """Fresh UIDs for a series (sharing ``study_uid``/``frame_of_reference`` when given)."""
    study = study_uid or generate_uid()
    return {"patient_id": patient_id, "description": description, "series_number": str(series_number),
            "study_uid": study, "series_uid": generate_uid(),
            "frame_of_reference": frame_of_reference or generate_uid()}

