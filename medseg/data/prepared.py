"""The output folder of ``prepare``: the one reader and writer of its JSON files.

A prepare folder holds

- ``datalist.json``: ``{"train": [...], "validation": [...], "test": [...], "unlabelled": [...]}``,
  each entry a dict with ``name``, ``image`` (``(C, X, Y, Z)`` float32 ``.npy``), ``label``
  (``(X, Y, Z)`` uint8 ``.npy`` or ``None``), ``source_images``, ``source_label`` and ``geometry``;
- ``plan.json``: target spacing (mm, R/A/S), patch size, ``preprocessing`` (a
  :class:`~medseg.data.preprocess.PreprocessSpec`), ``labels`` (a
  :class:`~medseg.data.labels.LabelSpec`), ``source`` (``kind``, ``root``, ``convention``,
  ``options``: enough to rebuild the dataset source) and ``cache``;
- ``fingerprint.json``: the dataset fingerprint (:mod:`medseg.data.fingerprint`).

Every other module reads these files through :class:`PreparedDataset`, never by parsing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.data.sources import CaseRef, Source, make_source
from medseg.errors import DataError
from medseg.utils.files import write_json

log = logging.getLogger(__name__)

DATALIST = "datalist.json"
PLAN = "plan.json"
FINGERPRINT = "fingerprint.json"

#: Splits of ``datalist.json``, in the order ``prepare`` writes them.
SPLITS = ("train", "validation", "test", "unlabelled")

#: What to suggest when a split is empty.
_EMPTY_HINTS = {
    "test": "set evaluate.split=validation to score the validation cases",
    "validation": "set evaluate.split=test, or raise data.val_fraction and run prepare again",
    "train": "add labelled cases, or lower data.val_fraction and data.test_fraction and run prepare again",
}


@dataclass(frozen=True)
class PreparedDataset:
    """A prepare folder: the split (``datalist``), the ``plan`` and the dataset ``fingerprint``.

    Args:
        folder: the prepare output folder.
        datalist: split name -> cache entries (see the module docstring).
        plan: the contents of ``plan.json``.
        fingerprint: the contents of ``fingerprint.json`` (``None`` when the folder has none).
        report: what the prepare run that made this dataset did (``reused_from_cache``,
            ``quarantined``, ``cache``); not written, so ``None`` when read back from the folder.

    Example:
        >>> prepared = PreparedDataset.read("runs/prepare")  # doctest: +SKIP
        >>> [e["name"] for e in prepared.split("test")]  # doctest: +SKIP
        ['case_007', 'case_012']
    """

    folder: Path
    datalist: dict[str, list[dict[str, Any]]]
    plan: dict[str, Any]
    fingerprint: dict[str, Any] | None = None
    report: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def read(cls, folder: str | Path) -> PreparedDataset:
        """Read ``datalist.json``, ``plan.json`` and (if present) ``fingerprint.json`` of ``folder``.

        Raises:
            DataError: a file is missing or is not the JSON object ``prepare`` writes (names the file).
        """
        folder = Path(folder)
        datalist = _read_object(folder / DATALIST)
        bad = [k for k, v in datalist.items() if not isinstance(v, list)]
        if bad or "train" not in datalist:
            raise DataError(folder / DATALIST, f"not a prepare datalist (needs lists {list(SPLITS)}, "
                                               f"got keys {sorted(datalist)})")
        plan = _read_object(folder / PLAN)
        missing = [k for k in ("preprocessing", "labels", "source") if k not in plan]
        if missing:
            raise DataError(folder / PLAN, f"not a prepare plan (missing {missing})")
        fp = _read_object(folder / FINGERPRINT) if (folder / FINGERPRINT).is_file() else None
        return cls(folder=folder, datalist=datalist, plan=plan, fingerprint=fp)

    def write(self) -> PreparedDataset:
        """Write ``datalist.json``, ``plan.json`` and ``fingerprint.json`` (when set) into ``folder``
        (each file atomically); returns ``self``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / DATALIST, self.datalist)
        write_json(self.folder / PLAN, self.plan)
        if self.fingerprint is not None:
            write_json(self.folder / FINGERPRINT, self.fingerprint)
        return self

    def split(self, name: str) -> list[dict[str, Any]]:
        """The entries of split ``name`` (``train``, ``validation``, ``test`` or ``unlabelled``).

        Raises:
            DataError: the split is unknown or empty (names ``datalist.json`` and the split); there
                is never a silent fallback to another split.
        """
        name = str(getattr(name, "value", name))
        if name not in self.datalist:
            raise DataError(self.folder / DATALIST, f"no split named {name!r}; the splits are {list(self.datalist)}")
        entries = self.datalist[name]
        if not entries:
            counts = ", ".join(f"{k}: {len(v)}" for k, v in self.datalist.items())
            hint = f"; {_EMPTY_HINTS[name]}" if name in _EMPTY_HINTS else ""
            raise DataError(self.folder / DATALIST, f"the {name} split is empty ({counts}){hint}")
        return list(entries)

    @property
    def counts(self) -> dict[str, int]:
        """Number of cases per split."""
        return {k: len(v) for k, v in self.datalist.items()}

    def summary(self) -> dict[str, Any]:
        """Summary of ``prepare``: cases, cache reuse, quarantined cases, split sizes, spacing, patch."""
        report = self.report or {}
        counts = self.counts
        return {"cases": sum(counts.values()), "reused_from_cache": report.get("reused_from_cache"),
                "quarantined": report.get("quarantined"), "split": counts,
                "target_spacing": self.plan["target_spacing"], "patch_size": self.plan["patch_size"],
                "cache": report.get("cache", self.plan.get("cache"))}

    @property
    def labels(self) -> LabelSpec:
        """Labels and regions of the dataset."""
        return LabelSpec.from_json(self.plan["labels"])

    @property
    def preprocessing(self) -> PreprocessSpec:
        """The preprocessing the cached arrays went through."""
        return PreprocessSpec.from_json(self.plan["preprocessing"])

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names in input order."""
        return tuple(self.plan["preprocessing"]["channels"])

    @property
    def patch_size(self) -> list[int]:
        """The patch size of the plan (explicit ``train.patch_size`` or planned)."""
        return [int(p) for p in self.plan["patch_size"]]

    def source(self) -> Source:
        """The dataset source recorded in ``plan.json`` (same kind, root and options as prepare used)."""
        src = self.plan["source"]
        options = src.get("options", {"convention": src.get("convention", "msd")})
        return make_source(src["kind"], src["root"], **options)

    def refs(self, names: Iterable[str]) -> dict[str, tuple[Source, CaseRef]]:
        """The source and the case reference of each named case, read from the dataset again.

        Raises:
            DataError: some names are not (or no longer) cases of the dataset (names its root).
        """
        names = list(names)
        source = self.source()
        by_name = {r.name: r for r in source.cases()}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DataError(self.plan["source"]["root"],
                            f"cases {missing} of the prepared split are no longer in the dataset")
        return {n: (source, by_name[n]) for n in names}

    def sha256(self) -> str:
        """sha256 of ``fingerprint.json`` + ``datalist.json`` as written (identifies the training data).

        Raises:
            DataError: the folder has no ``fingerprint.json``.
        """
        if not (self.folder / FINGERPRINT).is_file():
            raise DataError(self.folder / FINGERPRINT, "not found; is this a prepare output folder?")
        digest = hashlib.sha256((self.folder / FINGERPRINT).read_bytes() + (self.folder / DATALIST).read_bytes())
        return digest.hexdigest()


def _read_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; DataError naming the file when it is missing or not one."""
    if not path.is_file():
        raise DataError(path, "not found; is paths.prepared a prepare output folder?")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"unreadable ({type(e).__name__}: {e}); run prepare again") from e
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}; run prepare again")
    return obj
