"""Reference label maps to score against, wherever they live.

A reference gives its case's label map in medseg's internal codes with its voxel -> RAS affine
(:meth:`label`, what scoring reads) and, for the report's montages, the same plus the image
(:meth:`case`). Two kinds:

- :class:`FileReference`: a NIfTI label file in a folder (``evaluate.references=DIR``), with the
  images optionally in another folder (nnU-Net's ``<case>_0000.nii.gz`` naming or ``<case>.nii.gz``);
- :class:`SourceReference`: a case of a dataset source (the split of a prepared dataset): its label
  files remapped to internal codes by the source, on the grid of its image.

Either way the scorer (:func:`medseg.metrics.scoring.score_predictions`) and the montages work the
same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from medseg.data.io.nifti import read_nifti
from medseg.data.sources import CaseRef, Source
from medseg.errors import DataError
from medseg.metrics.external import image_for, list_cases, read_label_map

#: What :meth:`Reference.case` gives: label (internal codes), affine, image ``(C, *label shape)``
#: or ``None``, channel names.
ReferenceCase = tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]


class Reference(Protocol):
    """One reference case (see the module docstring)."""

    name: str
    path: Path

    def label(self) -> tuple[np.ndarray, np.ndarray]:
        """The label map in internal codes and its affine (raises DataError naming the file)."""

    def case(self) -> ReferenceCase:
        """Label, affine, image (or ``None``) and channel names, for the montages."""


@dataclass(frozen=True)
class FileReference:
    """A reference label file in ``convention`` coding; images optionally from ``images``."""

    name: str
    path: Path
    convention: str
    images: Path | None = None

    def label(self) -> tuple[np.ndarray, np.ndarray]:
        return read_label_map(self.path, self.convention)

    def case(self) -> ReferenceCase:
        ref, affine = self.label()
        files = image_for(self.images, self.name)
        if not files or self.images is None:
            return ref, affine, None, []
        chans = [read_nifti(f, ndim=(2, 3, 4)).data for f in files]
        image = np.concatenate([c.reshape(ref.shape + (-1,)) for c in chans], axis=-1).transpose(3, 0, 1, 2)
        return ref, affine, image, channel_names(self.images, image.shape[0])


@dataclass(frozen=True)
class SourceReference:
    """A case of a dataset source; ``channels`` name its image channels."""

    name: str
    source: Source
    ref: CaseRef
    channels: tuple[str, ...]

    @property
    def path(self) -> Path:
        """The case's label file (its first image when it has none)."""
        return self.ref.label if self.ref.label is not None else self.ref.images[0]

    def label(self) -> tuple[np.ndarray, np.ndarray]:
        label, affine, _, _ = self.case()
        return label, affine

    def case(self) -> ReferenceCase:
        case = self.source.load(self.ref)
        if case.label is None:
            raise DataError(self.path, f"case {self.name} has no reference label map")
        return case.label, case.affine, case.image, list(self.channels)


def folder_references(folder: Path, convention: str, images: Path | None = None) -> dict[str, FileReference]:
    """The references of a folder of label maps, by case name (sorted).

    Raises:
        DataError: the folder does not exist or holds no NIfTI files.
    """
    return {name: FileReference(name, path, convention, images)
            for name, path in list_cases(folder, "references").items()}


def source_references(refs: Mapping[str, tuple[Source, CaseRef]], channels: Sequence[str]
                      ) -> dict[str, SourceReference]:
    """The references of dataset cases (e.g. :meth:`medseg.data.prepared.PreparedDataset.refs`), in
    the given order."""
    return {name: SourceReference(name, source, ref, tuple(channels)) for name, (source, ref) in refs.items()}


def channel_names(images: Path, n: int) -> list[str]:
    """Channel names from a ``dataset.json`` next to the image folder (nnU-Net ``channel_names`` or
    MSD ``modality``), else ``channel 0, 1, ...``."""
    meta = images.parent / "dataset.json"
    try:
        obj = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        names = obj.get("channel_names") or obj.get("modality") or {}
        found = [str(names.get(str(i), f"channel {i}")) for i in range(n)]
    except (OSError, ValueError, AttributeError):
        found = []
    return found if len(found) == n else [f"channel {i}" for i in range(n)]
