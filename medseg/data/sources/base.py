"""Common types of all dataset sources."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import DataError


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk.

    Args:
        name: case identifier (unique within a dataset).
        images: one 4D file (channel last) or one 3D file per channel, in channel order.
        label: label file, or ``None`` for an unlabelled case.
        split: ``"train"`` or ``"test"`` as the dataset declares it.
    """

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    split: str = "train"

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
    """

    channels: tuple[str, ...] = ()

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")

    @abstractmethod
    def cases(self) -> list[CaseRef]:
        """List every case the dataset declares."""

    @abstractmethod
    def load(self, ref: CaseRef) -> Case:
        """Load and validate one case."""


def affines_match(a: np.ndarray, b: np.ndarray, tol_mm: float = 1e-3) -> bool:
    """Whether two affines place every voxel of a grid within ``tol_mm`` of each other.

    Compared element-wise: rotation/zoom columns and the translation, both in mm.
    """
    return bool(np.allclose(a[:3, :4], b[:3, :4], atol=tol_mm, rtol=0))
