"""Dataset sources: each lists its cases and loads one case as a :class:`~medseg.data.sources.base.Case`.

Reader contract (as in nnU-Net): image ``(C, X, Y, Z)`` float32 in the file's voxel order, label
``(X, Y, Z)`` uint8 in medseg's internal codes, one voxel -> RAS mm affine shared by both.

========= ============================================================================
source    layout
========= ============================================================================
msd       Decathlon task folder: ``dataset.json``, 4D NIfTI images (channel last)
brats     BraTS 2021 (``CASE_flair`` ...) or 2023 (``CASE-t2f`` ...) case folders
nifti     any NIfTI tree: per-channel ``{case}`` file patterns, or a datalist JSON
dicom     DICOM MR studies: one series per channel, chosen by SeriesDescription
xray      2D CR/DX DICOM radiographs with PNG/NIfTI masks
========= ============================================================================
"""

from __future__ import annotations

from typing import Any

from medseg.data.sources.base import Case, CaseRef, Source
from medseg.data.sources.brats import BraTSSource
from medseg.data.sources.dicom import DicomSource, XraySource
from medseg.data.sources.msd import MSDSource
from medseg.data.sources.nifti import NiftiSource

SOURCES: dict[str, type[Source]] = {"msd": MSDSource, "brats": BraTSSource, "nifti": NiftiSource,
                                    "dicom": DicomSource, "xray": XraySource}


def make_source(kind: str, root: str, **kwargs: Any) -> Source:
    """Build the source named ``kind`` (a key of :data:`SOURCES`) over ``root``.

    Keyword arguments a source does not take are ignored, so one ``data`` config section can
    serve every source.
    """
    from medseg.errors import ConfigError

    try:
        cls = SOURCES[kind]
    except KeyError as e:
        raise ConfigError(f"data.source={kind!r} is not known; valid sources: {sorted(SOURCES)}") from e
    return cls(root, **kwargs)


__all__ = ["Case", "CaseRef", "Source", "MSDSource", "BraTSSource", "NiftiSource", "DicomSource",
           "XraySource", "SOURCES", "make_source"]
