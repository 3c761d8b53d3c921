"""DICOM Segmentation (SEG) output with highdicom, referencing the source series.

A predicted label map on the grid of a DICOM series (as :func:`medseg.data.io.dicom.read_series`
builds it: ``(columns, rows, slices)`` with slices sorted along the normal) becomes one SEG object,
one segment per foreground label, frames aligned to the source images (single-frame series, or the
frames of an enhanced multi-frame image). Needs ``highdicom`` (``pip install 'medseg[dicom-seg]'``).

What a PACS and viewers look for is recorded: ContentCreatorName, a SeriesDescription naming the
model, a distinct RecommendedDisplayCIELabValue per segment (:data:`SEGMENT_COLOURS`, then hues a
golden angle apart), and on every segment the AlgorithmIdentificationSequence (name ``medseg``,
version = the artifact's weights sha256 when the caller passes it).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medseg.data.io.dicom import dcmread, series_geometry
from medseg.errors import ConfigError, DataError
from medseg.utils.files import atomic_path

#: SNOMED CT codes (code, scheme, meaning) used for the segments.
CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
TYPES = {"edema": ("79654002", "SCT", "Edema"), "necrosis": ("6574001", "SCT", "Necrosis")}
NEOPLASM = ("108369006", "SCT", "Neoplasm")
#: DICOM code of the algorithm family.
ARTIFICIAL_INTELLIGENCE = ("123109", "DCM", "Artificial Intelligence")
#: Type 2 patient/study attributes highdicom copies from the source; anonymised or minimal scanner
#: exports often omit them, so the in-memory copies get empty values (the files are not touched).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: sRGB colours of the first segments (red, green, blue, yellow, magenta, cyan, orange, violet).
SEGMENT_COLOURS = ((220, 50, 47), (60, 180, 75), (0, 130, 200), (255, 225, 25), (240, 50, 230),
                   (70, 240, 240), (245, 130, 48), (145, 30, 180))
#: Longest value of a LO attribute (SeriesDescription, AlgorithmVersion, ...).
LO_MAX = 64


def write_dicom_seg(path: Path, label: np.ndarray, series_files: Sequence[Path], labels: Mapping[int, str],
                    max_voxels: int = 2**31, version: str = "", *, algorithm_version: str = "",
                    model_name: str = "", content_creator: str = "medseg^") -> Path:
    """Write ``label`` (internal codes on the series grid) as a DICOM SEG referencing the series.

    Args:
        path: output ``.dcm`` path (written atomically).
        label: ``(columns, rows, slices)`` label map.
        series_files: the files of the source series (the first channel's).
        labels: internal code -> name (background 0 is skipped).
        max_voxels: passed to the series reader's size check.
        version: medseg version, recorded as SoftwareVersions.
        algorithm_version: AlgorithmVersion of every segment: the artifact's sha256 (``version``,
            then ``unknown``, when empty).
        model_name: the model named in the SeriesDescription (``medseg <model_name> segmentation``).
        content_creator: ContentCreatorName (a person name: ``family^given``; the trailing caret
            marks a single-component name).

    Raises:
        ConfigError: highdicom is not installed.
        DataError: naming the series file, when the label map is not on the series grid or the
            series cannot carry a SEG.
    """
    hd = _highdicom()
    sources, frames, first = _source_frames(label, series_files, max_voxels)
    frames, codes = _segment_numbers(frames, labels)
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg", version=(algorithm_version or version
                                                                           or "unknown")[:LO_MAX],
                                                   family=hd.sr.CodedConcept(*ARTIFICIAL_INTELLIGENCE))
    descriptions = [_segment_description(hd, number, str(labels[code]), algorithm)
                    for number, code in enumerate(codes, start=1)]
    description = f"medseg {model_name} segmentation" if model_name else "medseg segmentation"
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg",
            manufacturer_model_name="medseg U-Net", software_versions=version or "unknown", device_serial_number="0",
            content_creator_name=content_creator, content_label="MEDSEG",
            content_description=description[:LO_MAX], series_description=description[:LO_MAX])
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DataError(first, f"cannot build a DICOM SEG on this series ({type(e).__name__}: {e})") from e
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path


def _highdicom() -> ModuleType:
    try:
        import highdicom as hd
    except ImportError as e:
        raise ConfigError("DICOM SEG output needs highdicom: pip install 'medseg[dicom-seg]' "
                          "(or predict.dicom_seg=false)") from e
    return hd


def _source_frames(label: np.ndarray, series_files: Sequence[Path], max_voxels: int
                   ) -> tuple[list[Dataset], np.ndarray, Path]:
    """The source datasets and the label map as ``(frames, rows, columns)`` in their frame order."""
    slices, _, (rows, cols), _ = series_geometry(series_files, max_voxels)
    if label.shape != (cols, rows, len(slices)):
        raise DataError(series_files[0], f"label map {label.shape} is not on the series grid "
                                         f"{(cols, rows, len(slices))}")
    paths = list(dict.fromkeys(s.path for s in slices))
    try:
        datasets = {p: dcmread(p) for p in paths}  # bare data sets too, as the series was read
    except Exception as e:  # noqa: BLE001 - the file was read a moment ago: changed or removed since
        raise DataError(paths[0], f"cannot read the source series again ({type(e).__name__}: {e})") from e
    for ds in datasets.values():
        for keyword in TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    if not all(s.frame is not None for s in slices):
        frames = np.stack([label[:, :, k].T for k in range(len(slices))]).astype(np.uint8)
        return [datasets[s.path] for s in slices], frames, paths[0]
    if len(paths) != 1:
        raise DataError(paths[0], "DICOM SEG for a series spread over several multi-frame files is not supported")
    n_frames = int(getattr(datasets[paths[0]], "NumberOfFrames", len(slices)))
    frames = np.zeros((n_frames, rows, cols), dtype=np.uint8)
    for k, s in enumerate(slices):
        frames[int(s.frame)] = label[:, :, k].T
    return [datasets[paths[0]]], frames, paths[0]


def _segment_numbers(frames: np.ndarray, labels: Mapping[int, str]) -> tuple[np.ndarray, list[int]]:
    """Internal codes -> segment numbers 1..n (as DICOM requires); returns the frames and the codes."""
    codes = [int(c) for c in sorted(labels) if int(c) != 0]
    remap = np.zeros(max(codes + [int(frames.max())]) + 1, dtype=np.uint8)
    for number, code in enumerate(codes, start=1):
        remap[code] = number
    return remap[frames], codes


def _segment_description(hd: ModuleType, number: int, name: str, algorithm: Any) -> Any:
    kind = next((v for k, v in TYPES.items() if k in name.lower()), NEOPLASM)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:LO_MAX],
        segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
        segmented_property_type=hd.sr.CodedConcept(*kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    description.RecommendedDisplayCIELabValue = dicom_lab(segment_colour(number))
    return description


def segment_colour(number: int) -> tuple[int, int, int]:
    """The sRGB colour (0..255) of segment ``number`` (1-based): :data:`SEGMENT_COLOURS`, then hues
    a golden angle apart."""
    if 1 <= number <= len(SEGMENT_COLOURS):
        return SEGMENT_COLOURS[number - 1]
    hue = (number * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def dicom_lab(rgb: tuple[int, int, int]) -> list[int]:
    """sRGB (0..255) -> CIELab (D65) scaled as DICOM stores it: L 0..100 and a, b -128..127 onto 0..65535."""
    linear = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ np.array(linear)
    ratio = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(ratio > (6 / 29) ** 3, np.cbrt(ratio), ratio / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    scaled = (lab[0] * 65535 / 100, (lab[1] + 128) * 65535 / 255, (lab[2] + 128) * 65535 / 255)
    return [int(np.clip(round(v), 0, 65535)) for v in scaled]
