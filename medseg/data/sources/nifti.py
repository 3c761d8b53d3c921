"""Any folder of NIfTI files: channels and label found by file-name patterns, or a datalist JSON.

Patterns are paths relative to the dataset root in which ``{case}`` stands for the case id and
``*`` for any characters within one path component, e.g. ``{case}/{case}_flair.nii.gz`` or
``images/{case}_0000.nii.gz`` (nnU-Net raw layout). A datalist is a MONAI/MSD-style JSON file::

    {"training": [{"image": ["a_flair.nii.gz", "a_t1.nii.gz"], "label": "a_seg.nii.gz"}, ...],
     "validation": [...], "test": [{"image": [...]}]}

``image`` is one 4D file (channel last) or one file per channel; ``training`` and ``validation``
entries may be trained on, ``test``/``testing`` entries are held out. Listed paths must stay inside
the dataset root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.data.io.nifti import DEFAULT_MAX_VOXELS
from medseg.data.sources.base import Case, CaseRef, Source, check_nifti_case, resolve_inside, walk_files
from medseg.errors import ConfigError, DataError
from medseg.utils.files import read_json


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``{case}`` file pattern into a regular expression over relative POSIX paths."""
    if "{case}" not in pattern:
        raise ConfigError(f"file pattern {pattern!r} must contain {{case}}")
    out, seen = [], False
    for part in re.split(r"(\{case\}|\*)", pattern):
        if part == "{case}":
            out.append("(?P=case)" if seen else r"(?P<case>[^/]+?)")
            seen = True
        elif part == "*":
            out.append(r"[^/]*")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + r"\Z")


#: Datalist keys -> the split their entries belong to (``training``/``validation`` may be trained on).
DATALIST_SPLITS = {"training": "train", "validation": "train", "test": "test", "testing": "test"}


def datalist_problems(data: object) -> list[str]:
    """Every schema problem of a datalist's JSON content (empty when it is valid).

    The schema: an object with a ``training`` list; optional ``validation``, ``test`` and
    ``testing`` lists. ``training``/``validation`` entries are objects with ``image`` (a path or a
    non-empty list of paths) and ``label`` (a path); test entries are a path or an object with
    ``image``. An optional ``name`` is a string.
    """
    if not isinstance(data, dict):
        return [f"expected a JSON object with a 'training' list, got {json_type(data)}"]
    problems = [] if "training" in data else ["missing the 'training' key"]
    for key, split in DATALIST_SPLITS.items():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            problems.append(f"'{key}' must be a list, got {json_type(entries)}")
            continue
        for i, entry in enumerate(entries):
            problems += [f"{key}[{i}] {p}" for p in _entry_problems(entry, labelled=split == "train")]
    return problems


def _entry_problems(entry: object, labelled: bool) -> list[str]:
    """Schema problems of one datalist entry."""
    if isinstance(entry, str) and not labelled:
        return []
    if not isinstance(entry, dict):
        wanted = "'image' and 'label'" if labelled else "'image'"
        return [f"must be an object with {wanted}, got {json_type(entry)}"]
    problems = []
    image = entry.get("image")
    if image is None:
        problems.append("has no 'image'")
    elif not (isinstance(image, str) or (isinstance(image, list) and image and all(isinstance(i, str) for i in image))):
        problems.append(f"'image' must be a path or a non-empty list of paths, got {json_type(image)}")
    label = entry.get("label")
    if label is None and labelled:
        problems.append("has no 'label'")
    elif label is not None and not isinstance(label, str):
        problems.append(f"'label' must be a path, got {json_type(label)}")
    if "name" in entry and not isinstance(entry["name"], str):
        problems.append(f"'name' must be a string, got {json_type(entry['name'])}")
    return problems


def json_type(value: object) -> str:
    """A JSON value's type as a user reads it (``list of 2``, ``number``, ...)."""
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    return {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


class NiftiSource(Source):
    """NIfTI files matched by patterns or listed in a datalist.

    Args:
        root: dataset folder.
        channels: channel names in input order.
        patterns: channel name -> file pattern (ignored when ``datalist`` is given).
        label_pattern: label file pattern, or ``None`` for unlabelled data.
        datalist: JSON datalist, relative to ``root`` or absolute.
        convention: label coding of the files.
        max_voxels: refuse images whose header promises more voxels than this.
        affine_tol_mm: tolerance when comparing channel and label grids.
    """

    def __init__(self, root: str | Path, channels: Sequence[str] = (), patterns: Mapping[str, str] | None = None,
                 label_pattern: str | None = None, datalist: str | None = None, convention: str = "msd",
                 max_voxels: int = DEFAULT_MAX_VOXELS, affine_tol_mm: float = 1e-3, **_: object) -> None:
        super().__init__(root, convention, max_voxels, affine_tol_mm)
        self.channels = tuple(str(c) for c in channels)
        if not self.channels:
            raise ConfigError("data.source=nifti needs data.channels (channel names in input order)")
        self.patterns = dict(patterns or {})
        self.label_pattern = label_pattern
        self.datalist = None
        if datalist:
            path = Path(datalist) if Path(datalist).is_absolute() else self.root / datalist
            self.datalist = path
        elif set(self.patterns) != set(self.channels):
            raise ConfigError(f"data.patterns must give one pattern per channel {list(self.channels)}, "
                              f"got {sorted(self.patterns)}")

    def cases(self) -> list[CaseRef]:
        """Cases of the datalist, or every case id for which some pattern matches a file."""
        refs = self._from_datalist() if self.datalist else self._from_patterns()
        # cases whose listed paths escape the root or loop are reported by verification on their
        # own; they never make a name clash (an escaping path's name says nothing)
        names = [r.name for r in refs if not r.problems]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(self.datalist or self.root, f"duplicate case names {dup}")
        return refs

    def _from_patterns(self) -> list[CaseRef]:
        regexes = {c: pattern_regex(self.patterns[c]) for c in self.channels}
        label_re = pattern_regex(self.label_pattern) if self.label_pattern else None
        found: dict[str, dict[str, Path]] = {}
        for path in walk_files(self.root):
            rel = path.relative_to(self.root).as_posix()
            for key, rx in [*regexes.items(), ("<label>", label_re)]:
                m = rx.match(rel) if rx is not None else None
                if m:
                    found.setdefault(m.group("case"), {})[key] = path
        refs = []
        for case, files in sorted(found.items()):
            if set(files) == {"<label>"}:
                continue  # a label without images is not a case
            images = tuple(files.get(c, self.root / self.patterns[c].replace("{case}", case))
                           for c in self.channels)
            label = files.get("<label>")
            problems = ()
            if self.label_pattern and label is None:
                problems = (f"{self.root / self.label_pattern.replace('{case}', case)}: label file not found",)
            refs.append(CaseRef(name=case, images=images, label=label, problems=problems))
        if not refs:
            raise DataError(self.root, f"no file matches the patterns {self.patterns}")
        return refs

    def _from_datalist(self) -> list[CaseRef]:
        listing = self.datalist
        if not listing.is_file():
            raise DataError(listing, "datalist file not found")
        data = read_json(listing)
        problems = datalist_problems(data)
        if problems:
            raise DataError(listing, f"not a valid datalist ({len(problems)} problem(s)): " + "; ".join(problems))
        refs = [self._entry(entry, split, f"{key}[{i}]")
                for key, split in DATALIST_SPLITS.items() for i, entry in enumerate(data.get(key, []))]
        if not refs:
            raise DataError(listing, "datalist lists no cases under 'training', 'validation' or 'test'")
        return refs

    def _entry(self, entry: object, split: str, where: str) -> CaseRef:
        listing = self.datalist
        if isinstance(entry, str):
            entry = {"image": entry}
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        problems, paths = [], []
        for rel in images:
            path, problem = resolve_inside(self.root, str(rel), listing)
            paths.append(path)
            problems += [problem] if problem else []
        label = None
        if entry.get("label"):
            label, problem = resolve_inside(self.root, str(entry["label"]), listing)
            problems += [problem] if problem else []
        name = str(entry.get("name") or re.sub(r"(_0000)?\.nii(\.gz)?$", "", Path(str(images[0])).name))
        return CaseRef(name=name, images=tuple(paths), label=label, split=split, problems=tuple(problems))

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Load a case, listing every problem (see :func:`check_nifti_case`)."""
        return check_nifti_case(self, ref)
