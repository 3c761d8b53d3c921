"""Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr``, ``labelsTr``, ...).

Images are 4D NIfTI with the channel last; labels 3D. Task01 (BrainTumour) labels are already
in medseg's internal coding. ``labelsTs`` is optional: when present, test cases are labelled.
"""

from __future__ import annotations

from pathlib import Path

from medseg.data.io.nifti import DEFAULT_MAX_VOXELS
from medseg.data.sources.base import Case, CaseRef, Source, check_nifti_case, resolve_inside
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
                 max_voxels: int = DEFAULT_MAX_VOXELS, affine_tol_mm: float = 1e-3, **_: object) -> None:
        super().__init__(root, convention, max_voxels, affine_tol_mm)
        meta_path = self.root / "dataset.json"
        self.meta = read_json(meta_path)
        if not isinstance(self.meta, dict) or "training" not in self.meta:
            raise DataError(meta_path, "not an MSD dataset.json (no 'training' list)")
        modality = self.meta.get("modality") or self.meta.get("channel_names")
        if not isinstance(modality, dict) or not modality:
            raise DataError(meta_path, "no 'modality' mapping of channel index to name")
        self.channels = tuple(str(modality[k]) for k in sorted(modality, key=int))

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
        listing = self.root / "dataset.json"
        image = entry["image"] if isinstance(entry, dict) else entry
        image_path, problem = resolve_inside(self.root, image, listing)
        problems = [problem] if problem else []
        name = image_path.name.removesuffix(".gz").removesuffix(".nii")
        label_path = None
        if isinstance(entry, dict) and entry.get("label"):
            label_path, problem = resolve_inside(self.root, entry["label"], listing)
            problems += [problem] if problem else []
        else:  # MSD lists test images only; labelsTs/ is optional
            guess = self.root / "labelsTs" / image_path.name
            label_path = guess if guess.exists() else None
        return CaseRef(name=name, images=(image_path,), label=label_path, split=split, problems=tuple(problems))

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Load a case, listing every problem (see :func:`check_nifti_case`)."""
        return check_nifti_case(self, ref)
