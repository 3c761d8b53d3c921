"""Scoring label maps that another tool wrote: folders of predictions and references.

``medseg evaluate evaluate.predictions=PRED evaluate.references=REF`` scores any folder of
predicted label maps (nnU-Net's output folder, a MONAI bundle's, a colleague's) against a folder
of references with medseg's metrics. Cases are matched by name: the file name without ``.nii.gz``
/ ``.nii`` (and, for images only, without nnU-Net's ``_0000`` channel suffix).

Every prediction is checked against its reference before scoring: readable NIfTI, integer
labels only, label values defined by the folder's label coding, and the same voxel grid (shape
and affine within 1e-3 mm). A problem is a :class:`~medseg.errors.DataError` naming the case and
the file.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def list_cases(folder: Path, what: str) -> dict[str, Path]:
    """Case name -> file for every NIfTI file directly in ``folder``."""
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
    if not out:
        raise DataError(folder, f"the {what} folder holds no .nii.gz / .nii files")
    return out


@dataclass
class Matched:
    """The outcome of matching a prediction folder to a reference folder."""

    pairs: dict[str, tuple[Path, Path]]  # case -> (prediction, reference)
    references: dict[str, Path]  # every reference case -> file
    missing: list[str]  # references without a prediction
    unmatched: list[str]  # predictions without a reference (cannot be scored)


def match_folders(predictions: Path, references: Path) -> Matched:
    """Pair the files of two folders by case name."""
    preds = list_cases(predictions, "predictions")
    refs = list_cases(references, "references")
    return Matched(pairs={n: (preds[n], refs[n]) for n in refs if n in preds}, references=refs,
                   missing=[n for n in refs if n not in preds],
                   unmatched=[n for n in preds if n not in refs])


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


def load_pair(name: str, pred_path: Path, ref_path: Path, convention: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prediction, reference, affine)`` in internal codes, checked to share one grid."""
    ref, ref_affine = read_label_map(ref_path, convention)
    pred, pred_affine = read_label_map(pred_path, convention)
    check_same_grid(name, pred_path, pred, pred_affine, ref, ref_affine)
    return pred, ref, ref_affine
