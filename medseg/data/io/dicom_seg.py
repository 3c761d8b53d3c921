"""DICOM Segmentation (SEG) output with highdicom, referencing the source series.

A predicted label map on the grid of a DICOM series (as :func:`medseg.data.io.dicom.read_series`
builds it: ``(columns, rows, slices)`` with slices sorted along the normal) becomes one SEG object,
one segment per foreground label, frames aligned to the source images (single-frame series, or the
frames of an enhanced multi-frame image). Needs ``highdicom`` (``pip install 'medseg[dicom-seg]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom

from medseg.data.io.dicom import series_geometry
from medseg.errors import ConfigError, DataError
from medseg.utils.files import atomic_path

#: SNOMED CT codes (code, scheme, meaning) used for the segments.
CATEGORY = ("49755003", "SCT", "Morphologically Abnormal Structure")
TYPES = {"edema": ("79654002", "SCT", "Edema"), "necrosis": ("6574001", "SCT", "Necrosis")}
NEOPLASM = ("108369006", "SCT", "Neoplasm")
#: Type 2 patient/study attributes highdicom copies from the source; anonymised or minimal scanner
#: exports often omit them, so the in-memory copies get empty values (the files are not touched).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(path: Path, label: np.ndarray, series_files: Sequence[Path], labels: Mapping[int, str],
                    max_voxels: int = 2**31, version: str = "") -> Path:
    """Write ``label`` (internal codes on the series grid) as a DICOM SEG referencing the series.

    Args:
        path: output ``.dcm`` path (written atomically).
        label: ``(columns, rows, slices)`` label map.
        series_files: the files of the source series (the first channel's).
        labels: internal code -> name (background 0 is skipped).
        max_voxels: passed to the series reader's size check.
        version: software version recorded in the object.
    """
    try:
        import highdicom as hd
    except ImportError as e:
        raise ConfigError("DICOM SEG output needs highdicom: pip install 'medseg[dicom-seg]' "
                          "(or predict.dicom_seg=false)") from e
    slices, _, (rows, cols), _ = series_geometry(series_files, max_voxels)
    if label.shape != (cols, rows, len(slices)):
        raise DataError(series_files[0], f"label map {label.shape} is not on the series grid "
                                         f"{(cols, rows, len(slices))}")
    paths = list(dict.fromkeys(s.path for s in slices))
    datasets = {p: pydicom.dcmread(p) for p in paths}
    for ds in datasets.values():
        for keyword in TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    multiframe = all(s.frame is not None for s in slices)
    if multiframe:
        if len(paths) != 1:
            raise DataError(paths[0], "DICOM SEG for a series spread over several multi-frame files is not supported")
        n_frames = int(getattr(datasets[paths[0]], "NumberOfFrames", len(slices)))
        frames = np.zeros((n_frames, rows, cols), dtype=np.uint8)
        for k, s in enumerate(slices):
            frames[int(s.frame)] = label[:, :, k].T
        sources = [datasets[paths[0]]]
    else:
        frames = np.stack([label[:, :, k].T for k in range(len(slices))]).astype(np.uint8)
        sources = [datasets[s.path] for s in slices]
    codes = [int(c) for c in sorted(labels) if int(c) != 0]
    remap = np.zeros(max(codes + [int(frames.max())]) + 1, dtype=np.uint8)
    for i, c in enumerate(codes, start=1):
        remap[c] = i  # segment numbers must be 1..n
    frames = remap[frames]
    algo = hd.AlgorithmIdentificationSequence(name="medseg", version=version or "unknown",
                                              family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"))
    descriptions = []
    for i, c in enumerate(codes, start=1):
        name = str(labels[c])
        kind = next((v for k, v in TYPES.items() if k in name.lower()), NEOPLASM)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=i, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept(*CATEGORY),
            segmented_property_type=hd.sr.CodedConcept(*kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg",
            manufacturer_model_name="medseg U-Net", software_versions=version or "unknown", device_serial_number="0",
            series_description="medseg segmentation")
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DataError(paths[0], f"cannot build a DICOM SEG on this series ({type(e).__name__}: {e})") from e
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
