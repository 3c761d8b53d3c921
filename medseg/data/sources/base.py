"""Common types of all dataset sources, and the NIfTI case reader they share.

Reader contract (as in nnU-Net): a loaded :class:`Case` holds the image ``(C, X, Y, Z)`` float32 in
the file's voxel order, the label ``(X, Y, Z)`` uint8 in medseg's internal codes, and one
voxel -> RAS+ millimetre affine shared by both; spacing (mm) follows from the affine. 2D images
(X-rays) are ``(C, X, Y, 1)``.

Every source offers :meth:`Source.check`, which reports *every* problem of a case (missing files,
headers, shapes, affines, values) instead of stopping at the first, and :meth:`Source.load`, which
raises the first problem as a :class:`~medseg.errors.DataError`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.io.nifti import DEFAULT_MAX_VOXELS, NiftiVolume, read_nifti
from medseg.data.labels import LabelSpec, check_nested, label_spec, nested_chain, region_masks, remap_labels
from medseg.errors import DataError, InvalidCase


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk.

    Args:
        name: case identifier (unique within a dataset).
        images: one 4D file (channel last) or one file per channel, in channel order. For DICOM
            the files of every channel's series, grouped in ``series``.
        label: label file, or ``None`` for an unlabelled case.
        split: ``"train"`` or ``"test"`` as the dataset declares it.
        problems: problems found while listing the dataset (a path escaping the root, ...).
        series: DICOM only: the files of each channel's series, in channel order.
        identification: DICOM only: why each channel's series was chosen, one
            ``(channel, SeriesInstanceUID, SeriesNumber, SeriesDescription, reasons)`` per channel
            (see :mod:`medseg.data.contrasts`).
        missing: channels the case lacks (a study without that series, a folder without that
            file); their slot in ``images``/``series`` holds another channel's files as a stand-in
            for the grid, and the loaded channel is zero (see :func:`medseg.data.contrasts.zero_channels`).
        folder: DICOM only: the study's folder (what names a case whose problems left it no files).
    """

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    split: str = "train"
    problems: tuple[str, ...] = ()
    series: tuple[tuple[Path, ...], ...] = ()
    identification: tuple[tuple[str, str, int, str, tuple[str, ...]], ...] = ()
    missing: tuple[str, ...] = ()
    folder: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """All files of the case, label last."""
        return self.images + ((self.label,) if self.label is not None else ())


@dataclass
class Case:
    """A loaded case: image ``(C, X, Y, Z)`` float32, label ``(X, Y, Z)`` uint8 internal codes."""

    ref: CaseRef
    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along the three voxel axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


class Source(ABC):
    """A dataset on disk.

    Args:
        root: dataset folder.
        convention: label coding of the files (a key of :data:`medseg.data.labels.CONVENTIONS`).
        max_voxels: refuse images whose header promises more voxels than this (before decoding).
        affine_tol_mm: tolerance when comparing the grids of channels and label.
    """

    channels: tuple[str, ...] = ()

    def __init__(self, root: str | Path, convention: str = "msd", max_voxels: int = DEFAULT_MAX_VOXELS,
                 affine_tol_mm: float = 1e-3) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")
        self.convention = convention
        self.labels: LabelSpec = label_spec(convention)
        self.max_voxels = int(max_voxels)
        self.affine_tol_mm = float(affine_tol_mm)

    @abstractmethod
    def cases(self) -> list[CaseRef]:
        """List every case the dataset declares."""

    @abstractmethod
    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Load a case and list every problem found; the case is ``None`` when there are any."""

    def load(self, ref: CaseRef) -> Case:
        """Load and validate one case.

        Raises:
            InvalidCase: every problem found (the message is the first and counts the others).
        """
        case, problems = self.check(ref)
        if problems or case is None:
            raise InvalidCase(ref.name, ref.files[0] if ref.files else self.root, problems)
        return case

    def input_files(self, ref: CaseRef) -> tuple[Path, ...]:
        """Files whose content defines the case (hashed to key the preprocessed cache)."""
        return ref.files

    def check_label(self, raw: np.ndarray, path: Path, problems: list[str]) -> np.ndarray | None:
        """Map a raw label array onto internal codes; append problems instead of raising."""
        if not np.array_equal(raw, np.round(raw)):
            problems.append(f"{path}: label map holds non-integer values")
            return None
        try:
            label = remap_labels(raw.astype(np.int64), self.convention, str(path))
            check_nested(region_masks(label, self.labels.regions), nested_chain(self.labels.regions), str(path))
        except DataError as e:
            problems.append(str(e))
            return None
        return label


def affines_match(a: np.ndarray, b: np.ndarray, tol_mm: float = 1e-3) -> bool:
    """Whether two affines place every voxel of a grid within ``tol_mm`` of each other.

    Compared element-wise: rotation/zoom columns and the translation, both in mm.
    """
    return bool(np.allclose(a[:3, :4], b[:3, :4], atol=tol_mm, rtol=0))


def grid_mismatch(ref_affine: np.ndarray, ref_shape: tuple[int, ...], affine: np.ndarray,
                  shape: tuple[int, ...], tol_mm: float) -> str | None:
    """Describe how a grid differs from a reference grid (shape, spacing, then affine), or ``None``."""
    if tuple(shape) != tuple(ref_shape):
        return f"shape {tuple(shape)} differs from {tuple(ref_shape)}"
    zooms, ref_zooms = (np.linalg.norm(m[:3, :3], axis=0) for m in (affine, ref_affine))
    if not np.allclose(zooms, ref_zooms, atol=tol_mm, rtol=0):
        return f"spacing {np.round(zooms, 4).tolist()} mm differs from {np.round(ref_zooms, 4).tolist()} mm"
    if not affines_match(affine, ref_affine, tol_mm):
        off = float(np.abs(affine[:3, :4] - ref_affine[:3, :4]).max())
        return f"affine (origin/orientation) differs by up to {off:.4g} mm (tolerance {tol_mm} mm)"
    return None


def align_to_grid(data: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray, ref_shape: tuple[int, ...],
                  tol_mm: float) -> np.ndarray | None:
    """Reorder the axes of ``data`` so that it lies on the reference grid, when it covers the same
    voxel centres in another axis order or direction (e.g. a label saved in LPS for an RAS image).

    Returns:
        The reordered array, or ``None`` when the grids differ by more than an axis permutation/flip.
    """
    from nibabel import orientations as ornt

    if data.ndim != 3:
        return None
    src, ref = ornt.io_orientation(affine), ornt.io_orientation(ref_affine)
    transform = ornt.ornt_transform(src, ref)
    moved = ornt.apply_orientation(data, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, data.shape)
    if grid_mismatch(ref_affine, ref_shape, new_affine, moved.shape, tol_mm) is None:
        return np.ascontiguousarray(moved)
    return None


def resolve_inside(root: Path, rel: str | Path, listed_in: Path) -> tuple[Path, str | None]:
    """Resolve a path listed in a dataset file; refuse symlink loops and paths outside ``root``.

    Returns:
        ``(path, problem)``; ``problem`` is ``None`` when the path is acceptable.
    """
    raw = Path(rel) if Path(rel).is_absolute() else root / rel
    try:
        path = raw.resolve(strict=False)
        if raw.is_symlink() or raw.exists():
            raw.resolve(strict=True)
    except (RuntimeError, OSError) as e:  # RuntimeError: symlink loop (Python < 3.13)
        return raw, f"{listed_in}: path {str(rel)!r} loops through symlinks ({type(e).__name__})"
    if not path.is_relative_to(root.resolve()):
        return raw, f"{listed_in}: path {str(rel)!r} escapes the dataset folder {root}"
    return path, None


def walk_files(root: Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    """Every regular file under ``root`` in sorted order, not following directory symlinks.

    Symlinked files are kept when they resolve inside ``root``.
    """
    out = []
    root_real = root.resolve()
    skip_real = tuple(s.resolve() for s in skip)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (here / d).resolve() not in skip_real)
        for f in sorted(filenames):
            p = here / f
            if f.startswith("."):
                continue
            if p.is_symlink():
                try:
                    real = p.resolve(strict=True)
                except (RuntimeError, OSError):
                    continue
                if not real.is_relative_to(root_real) or not real.is_file():
                    continue
            out.append(p)
    return out


def read_channels(ref: CaseRef, n_channels: int, max_voxels: int, problems: list[str]
                  ) -> list[NiftiVolume | None] | None:
    """Read a case's NIfTI channel files (one 4D file or one 3D file per channel), collecting problems.

    Returns:
        One volume per channel (``None`` where that channel's file has a problem), or ``None`` when
        the files do not give the expected channels at all.
    """
    vols: list[NiftiVolume | None] = []
    for path in ref.images:
        try:
            vols.append(read_nifti(path, ndim=(3, 4), max_voxels=max_voxels))
        except DataError as e:
            problems.append(str(e))
            vols.append(None)
    if len(vols) == 1:
        v = vols[0]
        if v is None:
            return None
        if v.data.ndim == 4 or n_channels == 1:
            n = v.data.shape[-1] if v.data.ndim == 4 else 1
            if n != n_channels:
                problems.append(f"{ref.images[0]}: expected {n_channels} channels, got {n}")
                return None
            data = v.data if v.data.ndim == 4 else v.data[..., None]
            return [NiftiVolume(np.ascontiguousarray(data[..., c]), v.affine, v.path) for c in range(n)]
    if len(vols) != n_channels:
        problems.append(f"{ref.images[0]}: expected {n_channels} channel files, got {len(vols)}")
        return None
    out: list[NiftiVolume | None] = []
    for v in vols:
        if v is not None and v.data.ndim == 4 and v.data.shape[-1] != 1:
            problems.append(f"{v.path}: expected a 3D image for one channel, got shape {v.data.shape}")
            v = None
        out.append(None if v is None else NiftiVolume(v.data.reshape(v.data.shape[:3]), v.affine, v.path))
    return out


def check_nifti_case(source: Source, ref: CaseRef) -> tuple[Case | None, list[str]]:
    """Load a NIfTI case, listing every problem: unreadable or truncated files, NaN/Inf, budget,
    channel count, empty channels, shape/spacing/affine mismatches, label values."""
    problems = list(ref.problems)
    missing = [f for f in ref.files if not f.is_file()]
    problems += [f"{f}: file not found" for f in missing if f"{f}: file not found" not in problems]
    vols = read_channels(ref, len(source.channels), source.max_voxels, problems) if not any(
        f in missing for f in ref.images) else None
    lab_vol = None
    if ref.label is not None and ref.label not in missing:
        try:
            lab_vol = read_nifti(ref.label, ndim=(3,), max_voxels=source.max_voxels)
        except DataError as e:
            problems.append(str(e))
    readable = [v for v in vols or [] if v is not None]
    if not readable:
        return None, problems
    first = readable[0]
    channels = []
    for v, name in zip(vols, source.channels):
        if v is None:
            continue
        if not v.data.any():
            problems.append(f"{v.path}: channel {name!r} is empty (every voxel is zero)")
        channels.append(v.data if v is first else _on_grid(v, first, source.affine_tol_mm, problems, ""))
    label = None
    if lab_vol is not None:
        raw = _on_grid(lab_vol, first, source.affine_tol_mm, problems, "label ")
        if raw is not None:
            label = source.check_label(raw, ref.label, problems)
    if problems:
        return None, problems
    image = np.stack(channels)
    return Case(ref=ref, image=image, affine=first.affine, label=label), []


def _on_grid(vol: NiftiVolume, ref: NiftiVolume, tol_mm: float, problems: list[str], what: str
             ) -> np.ndarray | None:
    """``vol``'s data on ``ref``'s grid (same grid, or the same voxels in another axis order)."""
    why = grid_mismatch(ref.affine, ref.data.shape, vol.affine, vol.data.shape, tol_mm)
    if why is None:
        return vol.data
    aligned = align_to_grid(vol.data, vol.affine, ref.affine, ref.data.shape, tol_mm)
    if aligned is None:
        problems.append(f"{vol.path}: {what}{why} of {ref.path.name}")
    return aligned
