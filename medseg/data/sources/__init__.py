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

import inspect
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
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


#: ``data`` keys that change what a source reads (those its constructor names are passed to it and
#: are part of the cache keys of ``prepare``; the others, e.g. DICOM series hints for a NIfTI
#: source, are left out, so that changing them cannot invalidate its cache).
SOURCE_KEYS = ("source", "convention", "channels", "patterns", "label_pattern", "datalist", "series_patterns",
               "series_mapping", "label_dir", "slice_gap_tol_mm", "resample_channels", "mask_dir", "voi_lut",
               "max_voxels", "affine_tol_mm")


def source_options(data_cfg: Any) -> dict[str, Any]:
    """The ``data`` settings a source is built from, as plain JSON-ready values (enums as their
    strings); recorded in ``plan.json`` so that later stages rebuild the same source.

    Args:
        data_cfg: the ``data`` section (:class:`~medseg.config.DataConfig` or a DictConfig).
    """
    kind = source_kind(data_cfg)
    taken = _parameters(SOURCES[kind]) if kind in SOURCES else set(SOURCE_KEYS)
    options = {}
    for key in (k for k in SOURCE_KEYS[1:] if k in taken):
        try:
            options[key] = _plain_value(getattr(data_cfg, key))
        except (AttributeError, KeyError):  # a partial config: the source's default applies
            continue
    return options


def build_source(data_cfg: Any, root: str | Path | None = None) -> Source:
    """The source named by ``data.source`` over ``root`` (default ``data.root``).

    Args:
        data_cfg: the ``data`` section (:class:`~medseg.config.DataConfig` or a DictConfig).
        root: read this folder with the ``data`` settings instead of ``data.root``.
    """
    return make_source(source_kind(data_cfg), str(data_cfg.root if root is None else root), **source_options(data_cfg))


def source_kind(data_cfg: Any) -> str:
    """``data.source`` as its string (an enum's value; ``"None"`` for a config without one)."""
    source = getattr(data_cfg, "source", None)
    return str(getattr(source, "value", source))


def _parameters(cls: type[Source]) -> set[str]:
    """Names of the keyword parameters of a source's constructor (``**_``, the options it ignores,
    aside); every key of :data:`SOURCE_KEYS` for one that passes ``**kwargs`` on.

    >>> sorted(_parameters(BraTSSource))
    ['affine_tol_mm', 'convention', 'max_voxels', 'root']
    """
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD and n != "_" for n, p in params.items()):
        return set(SOURCE_KEYS)
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}


def _plain_value(value: Any) -> Any:
    """Enums as their values, mappings and sequences (OmegaConf containers too) as dicts and lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain_value(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain_value(v) for v in value]
    return value


__all__ = ["Case", "CaseRef", "Source", "MSDSource", "BraTSSource", "NiftiSource", "DicomSource",
           "XraySource", "SOURCES", "SOURCE_KEYS", "make_source", "source_kind", "source_options", "build_source"]
