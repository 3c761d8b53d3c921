"""The preprocessing cache of ``prepare`` (under ``paths.cache_dir``).

- ``verified/<case>-<key>.json``: statistics of a case that passed verification, keyed by the
  sha256 of its files and the source settings (:func:`input_hash`), so unchanged cases are not
  decoded again (see :mod:`medseg.data.verify`);
- ``preprocessed/<spec key>/<case>-<key>/``: ``image.npy`` ``(C, X, Y, Z)`` float32 with X, Y, Z
  along R, A, S, ``label.npy`` ``(X, Y, Z)`` uint8, ``meta.json``; reused while its inputs and the
  preprocessing settings are unchanged; a change rebuilds only the cases it touches. Entries are
  written to a temporary folder and renamed, so an interrupted run never leaves a broken entry.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.preprocess import PreprocessSpec, preprocess
from medseg.data.sources import CaseRef, Source, source_kind, source_options
from medseg.errors import MedsegError, failure_line
from medseg.utils.files import atomic_dir, read_json, sha256_file, to_json, write_json

log = logging.getLogger(__name__)

#: Bump when preprocessing code changes in a way that alters cached arrays.
PREPROCESS_VERSION = 2


def cache_key(obj: Any) -> str:
    """Short sha256 of the JSON form of ``obj``."""
    return hashlib.sha256(to_json(obj).encode()).hexdigest()[:16]


def source_key(data_cfg: Any, source: Source) -> str:
    """Key of the source settings (kind, options, channels read): part of every cache key.

    Args:
        data_cfg: the ``data`` section (:class:`~medseg.config.DataConfig` or a DictConfig).
        source: the source built from it.
    """
    return cache_key({"kind": source_kind(data_cfg), **source_options(data_cfg),
                      "channels_read": list(source.channels)})


def spec_folder(cache_root: Path, spec: PreprocessSpec, src_key: str) -> Path:
    """The folder of preprocessed entries for ``spec`` and the source settings."""
    return cache_root / "preprocessed" / cache_key({"spec": spec.to_json(), "source": src_key,
                                                    "version": PREPROCESS_VERSION})


def input_hash(source: Source, ref: CaseRef, src_key: str) -> str:
    """Key of a case: its input files (names and sha256) and the source settings."""
    h = hashlib.sha256(src_key.encode())
    for f in source.input_files(ref):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def prepare_case(source: Source, ref: CaseRef, check: dict[str, Any], spec: PreprocessSpec,
                 cache: Path) -> dict[str, Any] | str:
    """Preprocess one verified case into the cache (or reuse it); a problem comes back as a message.

    Args:
        source: the dataset source.
        ref: the case.
        check: its verification record (``input_key``, ``stats``).
        spec: the preprocessing.
        cache: the folder of entries for ``spec`` (:func:`spec_folder`).

    Returns:
        The case's cache entry (``image``, ``label``, ``geometry``), where it sits in the dataset
        and ``reused``; or the problem as a one-line message.
    """
    try:
        entry = cache / f"{ref.name}-{check['input_key']}"
        # where the case sits in this dataset: never taken from the cache
        where = {"name": ref.name, "split": ref.split, "source_images": [str(p) for p in ref.images[:8]],
                 "source_label": str(ref.label) if ref.label else None, "stats": check["stats"]}
        if (entry / "meta.json").is_file():
            return {**read_json(entry / "meta.json"), **where, "reused": True}
        return {**_write_entry(source, ref, spec, entry), **where, "reused": False}
    except MedsegError as e:
        return str(e)
    except (OSError, ValueError, MemoryError) as e:
        return failure_line(ref.images[0], e)


def _write_entry(source: Source, ref: CaseRef, spec: PreprocessSpec, entry: Path) -> dict[str, Any]:
    """Load, preprocess and write one case into ``entry`` (atomically); returns its ``meta.json``."""
    case = source.load(ref)
    image, label, geom = preprocess(case.image, case.affine, spec, case.label, name=str(ref.images[0]))
    meta = {
        "image": str((entry / "image.npy").resolve()),
        "label": str((entry / "label.npy").resolve()) if label is not None else None,
        "geometry": geom.to_json(),
    }
    with atomic_dir(entry) as tmp:
        np.save(tmp / "image.npy", image)
        if label is not None:
            np.save(tmp / "label.npy", label)
        write_json(tmp / "meta.json", meta)
    return meta
