"""Dataset sources: each lists its cases and loads one case as a :class:`~medseg.data.sources.base.Case`.

Reader contract (as in nnU-Net): image ``(C, X, Y, Z)`` float32 in the file's voxel order, label
``(X, Y, Z)`` uint8 in medseg's internal codes, one voxel -> RAS mm affine shared by both.
"""

from __future__ import annotations

from medseg.data.sources.base import Case, CaseRef, Source
from medseg.data.sources.msd import MSDSource

SOURCES: dict[str, type[Source]] = {"msd": MSDSource}


def make_source(kind: str, root: str, **kwargs) -> Source:
    """Build the source named ``kind`` (a key of :data:`SOURCES`) over ``root``."""
    from medseg.errors import ConfigError

    try:
        cls = SOURCES[kind]
    except KeyError as e:
        raise ConfigError(f"data.source={kind!r} is not known; valid sources: {sorted(SOURCES)}") from e
    return cls(root, **kwargs)


__all__ = ["Case", "CaseRef", "Source", "MSDSource", "SOURCES", "make_source"]
