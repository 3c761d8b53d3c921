"""Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr``, ``labelsTr``, ...).

Images are 4D NIfTI with the channel last; labels 3D. Task01 (BrainTumour) labels are already
in medseg's internal coding. ``labelsTs`` is optional: when present, test cases are labelled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.io.nifti import DEFAULT_MAX_VOXELS, read_nifti
from medseg.data.labels import remap_labels
from medseg.data.sources.base import Case, CaseRef, Source, affines_match
from medseg.errors import DataError
from medseg.utils.files import read_json


class MSDSource(Source):
    """An MSD task folder.

    Args:
        root: folder holding ``dataset.json``.
        convention: label convention of the files (``msd`` for Task01).
        max_voxels: refuse images whose header promises more voxels than this.
        affine_tol_mm: tolerance when comparing image and label affines.
    """

    def __init__(self, root: str | Path, convention: str = "msd",
                 max_voxels: int = DEFAULT_MAX_VOXELS, affine_tol_mm: float = 1e-3) -> None:
        super().__init__(root)
        self.convention = convention
        self.max_voxels = max_voxels
        self.affine_tol_mm = affine_tol_mm
        meta_path = self.root / "dataset.json"
        self.meta = read_json(meta_path)
        if not isinstance(self.meta, dict) or "training" not in self.meta:
            raise DataError(meta_path, "not an MSD dataset.json (no 'training' list)")
        modality = self.meta.get("modality") or self.meta.get("channel_names")
        if not isinstance(modality, dict) or not modality:
            raise DataError(meta_path, "no 'modality' mapping of channel index to name")
        self.channels = tuple(str(modality[k]) for k in sorted(modality, key=int))
        self.labels = {int(k): str(v) for k, v in self.meta.get("labels", {}).items()}

    def cases(self) -> list[CaseRef]:
        """Training cases (``training``) then test cases (``test``), label where available."""
        refs = [self._ref(e, "train") for e in self.meta["training"]]
        refs += [self._ref(e, "test") for e in self.meta.get("test", [])]
        names = [r.name for r in refs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(self.root / "dataset.json", f"duplicate case names {dup}")
        return refs

    def _ref(self, entry: dict | str, split: str) -> CaseRef:
        image = entry["image"] if isinstance(entry, dict) else entry
        image_path = self._resolve(image)
        name = image_path.name.removesuffix(".gz").removesuffix(".nii")
        if isinstance(entry, dict) and entry.get("label"):
            label_path = self._resolve(entry["label"])
        else:  # MSD lists test images only; labelsTs/ is optional
            guess = self.root / "labelsTs" / image_path.name
            label_path = guess if guess.exists() else None
        return CaseRef(name=name, images=(image_path,), label=label_path, split=split)

    def _resolve(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DataError(self.root / "dataset.json", f"path {rel!r} escapes the dataset folder")
        return path

    def load(self, ref: CaseRef) -> Case:
        """Load a case, checking channel count, shapes, affines and label values."""
        vol = read_nifti(ref.images[0], ndim=(3, 4), max_voxels=self.max_voxels)
        data = vol.data if vol.data.ndim == 4 else vol.data[..., None]
        if data.shape[-1] != len(self.channels):
            raise DataError(ref.images[0], f"expected {len(self.channels)} channels "
                                           f"{list(self.channels)}, got {data.shape[-1]}")
        image = np.ascontiguousarray(np.moveaxis(data, -1, 0))
        label = None
        if ref.label is not None:
            lab = read_nifti(ref.label, ndim=(3,), max_voxels=self.max_voxels)
            if lab.data.shape != image.shape[1:]:
                raise DataError(ref.label, f"label shape {lab.data.shape} differs from image shape "
                                           f"{image.shape[1:]} of {ref.images[0].name}")
            if not affines_match(lab.affine, vol.affine, self.affine_tol_mm):
                raise DataError(ref.label, f"label affine differs from the affine of {ref.images[0].name}")
            if not np.array_equal(lab.data, np.round(lab.data)):
                raise DataError(ref.label, "label map holds non-integer values")
            label = remap_labels(lab.data.astype(np.int64), self.convention, str(ref.label))
        return Case(ref=ref, image=image, affine=vol.affine, label=label)
