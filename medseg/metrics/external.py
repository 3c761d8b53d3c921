"""Folders of label maps: predictions (another tool's, or ``evaluate``'s own) and references.

``medseg evaluate evaluate.predictions=PRED evaluate.references=REF`` scores any folder of
predicted label maps (nnU-Net's output folder, a MONAI bundle's, a colleague's) against a folder
of references with medseg's metrics; ``evaluate`` with a checkpoint scores its own ``predictions/``
folder the same way (:mod:`medseg.metrics.scoring`). Cases are matched by name: the file name
without ``.nii.gz`` / ``.nii`` (and, for images only, without nnU-Net's ``_0000`` channel suffix).

Every prediction is checked against its reference before scoring: readable NIfTI, integer
labels only, label values defined by the folder's label coding, and the same voxel grid (shape
and affine within 1e-3 mm). A problem is a :class:`~medseg.errors.DataError` naming the case and
the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.io.nifti import read_nifti
from medseg.data.labels import remap_labels
from medseg.errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-3


def case_name(path: Path) -> str | None:
    """``case`` for ``case.nii.gz`` / ``case.nii``; ``None`` for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def list_cases(folder: Path, what: str, allow_empty: bool = False) -> dict[str, Path]:
    """Case name -> file for every NIfTI file directly in ``folder``.

    Raises:
        DataError: the folder does not exist, holds no NIfTI file (unless ``allow_empty``) or holds
            two files of one case.
    """
    if not folder.is_dir():
        raise DataError(folder, f"the {what} folder does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = case_name(p)
        if name is None or not p.is_file():
            continue
        if name in out:
            raise DataError(p, f"case {name!r} appears twice in the {what} folder ({out[name].name}, {p.name})")
        out[name] = p
    if not out and not allow_empty:
        raise DataError(folder, f"the {what} folder holds no .nii.gz / .nii files")
    return out


def image_for(images: Path | None, name: str) -> list[Path]:
    """Image files of a case in an optional image folder: ``name_0000.nii.gz, name_0001...`` (nnU-Net
    naming) or ``name.nii.gz``; an empty list if there is none."""
    if images is None:
        return []
    for suffix in NIFTI_SUFFIXES:
        channels = sorted(images.glob(f"{name}_[0-9][0-9][0-9][0-9]{suffix}"))
        if channels:
            return channels
        if (images / f"{name}{suffix}").is_file():
            return [images / f"{name}{suffix}"]
    return []


def read_label_map(path: Path, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map in internal codes and its affine; refuses non-integer or undefined values."""
    vol = read_nifti(path, ndim=(2, 3), dtype=np.float64)
    data = vol.data if vol.data.ndim == 3 else vol.data[..., None]
    if not np.array_equal(data, np.round(data)):
        bad = np.unique(data[data != np.round(data)])[:5].tolist()
        raise DataError(path, f"label map holds non-integer values (e.g. {bad}); expected integer labels")
    if data.min() < 0:
        raise DataError(path, f"label map holds negative values ({int(data.min())})")
    return remap_labels(data.astype(np.int64), convention, str(path)), vol.affine


def check_same_grid(name: str, pred_path: Path, pred: np.ndarray, pred_affine: np.ndarray,
                    ref: np.ndarray, ref_affine: np.ndarray) -> None:
    """Refuse a prediction that is not on its reference's voxel grid."""
    if pred.shape != ref.shape:
        raise DataError(pred_path, f"case {name}: prediction shape {pred.shape} differs from the reference "
                                   f"shape {ref.shape} (predictions must be on the reference grid)")
    diff = float(np.abs(np.asarray(pred_affine) - np.asarray(ref_affine)).max())
    if diff > AFFINE_TOLERANCE_MM:
        raise DataError(pred_path, f"case {name}: prediction affine differs from the reference affine by "
                                   f"{diff:.4g} mm (predictions must be on the reference grid)")


def read_prediction(name: str, path: Path, convention: str, ref: np.ndarray, ref_affine: np.ndarray) -> np.ndarray:
    """A predicted label map in internal codes, checked to lie on its reference's grid."""
    pred, pred_affine = read_label_map(path, convention)
    check_same_grid(name, path, pred, pred_affine, ref, ref_affine)
    return pred
