"""BraTS challenge layout: one folder per case, one NIfTI file per contrast plus ``-seg``/``_seg``.

Two releases are told apart from the file names:

=========== ===================================================== =====================
release     files                                                 label codes
=========== ===================================================== =====================
2018-2021   ``CASE/CASE_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` 1 NCR, 2 ED, 4 ET
2023+       ``CASE/CASE-t2f``, ``-t1n``, ``-t1c``, ``-t2w``, ``-seg``  1 NCR, 2 ED, 3 ET
=========== ===================================================== =====================

Channels are returned in MSD Task01 order (FLAIR, T1w, T1gd, T2w) under those names, so models
trained on either release or on MSD data take the same input. Cases without a segmentation file
(validation releases) are unlabelled.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.data.io.nifti import DEFAULT_MAX_VOXELS
from medseg.data.sources.base import Case, CaseRef, Source, check_nifti_case
from medseg.errors import DataError

CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")

#: release -> (suffix of each channel in CHANNELS order, label suffix, label convention)
RELEASES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "brats2021": (("_flair", "_t1", "_t1ce", "_t2"), "_seg", "brats2021"),
    "brats2023": (("-t2f", "-t1n", "-t1c", "-t2w"), "-seg", "brats2023"),
    # BraTS 2024+ tasks name files as 2023 does; their label codings are chosen explicitly
    **{c: (("-t2f", "-t1n", "-t1c", "-t2w"), "-seg", c)
       for c in ("brats2024_gli", "brats2024_met", "brats2024_men", "brats2024_ped")},
}

#: Releases told apart by their file naming (``convention=auto``).
DETECTED = ("brats2021", "brats2023")

_EXT = re.compile(r"\.nii(\.gz)?$")


class BraTSSource(Source):
    """A BraTS release folder (2018-2021 or 2023+ naming, detected automatically).

    Args:
        root: folder of case folders.
        convention: ``auto`` (from the file names), ``brats2021`` or ``brats2023``.
        max_voxels: refuse images whose header promises more voxels than this.
        affine_tol_mm: tolerance when comparing channel and label grids.
    """

    channels = CHANNELS

    def __init__(self, root: str | Path, convention: str = "auto", max_voxels: int = DEFAULT_MAX_VOXELS,
                 affine_tol_mm: float = 1e-3, **_: object) -> None:
        self.folders = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        release = self.detect(Path(root)) if convention in ("auto", "msd") else convention
        if release not in RELEASES:
            raise DataError(root, f"convention {convention!r} is not a BraTS release; "
                                  f"use auto or one of {sorted(RELEASES)}")
        super().__init__(root, RELEASES[release][2], max_voxels, affine_tol_mm)
        self.release = release

    def detect(self, root: Path) -> str:
        """The release whose file naming the case folders use."""
        votes = {r: 0 for r in DETECTED}
        for folder in self.folders[:20]:
            names = {_EXT.sub("", f.name) for f in folder.iterdir()}
            for release in DETECTED:
                suffixes = RELEASES[release][0]
                votes[release] += all(folder.name + s in names for s in suffixes)
        best = max(votes, key=votes.get)
        if not votes[best]:
            raise DataError(root, "no case folder holds BraTS 2021 (CASE_flair/_t1/_t1ce/_t2) or "
                                  "BraTS 2023 (CASE-t2f/-t1n/-t1c/-t2w) NIfTI files")
        if votes[best] and all(votes.values()):
            raise DataError(root, "case folders mix BraTS 2021 and BraTS 2023 file naming")
        return best

    def cases(self) -> list[CaseRef]:
        """One case per folder; a missing channel file is reported by :meth:`check`."""
        suffixes, seg, _ = RELEASES[self.release]
        refs = []
        for folder in self.folders:
            images = tuple(self._find(folder, folder.name + s) for s in suffixes)
            label = self._find(folder, folder.name + seg)
            refs.append(CaseRef(name=folder.name, images=images,
                                label=label if label.exists() else None))
        return refs

    @staticmethod
    def _find(folder: Path, stem: str) -> Path:
        for ext in (".nii.gz", ".nii"):
            if (folder / (stem + ext)).exists():
                return folder / (stem + ext)
        return folder / (stem + ".nii.gz")

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Load a case, listing every problem (see :func:`check_nifti_case`)."""
        return check_nifti_case(self, ref)
