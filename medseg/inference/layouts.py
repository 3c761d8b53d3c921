"""Input layouts of ``medseg-predict`` and ``medseg predict``: how the cases of an input folder are
found, how their files map onto the artifact's channels, and which label coding the outputs get.

========== ================================================= ================ ================
layout     files (in the folder or one level of case folders) channels          output coding
========== ================================================= ================ ================
nifti4d    ``<case>.nii.gz``: 4D, channels last (``pattern``) artifact order    msd
brats2023  ``<id>-t1n``, ``-t1c``, ``-t2w``, ``-t2f`` (2023-25) by name          brats2023
brats2021  ``CASE/CASE_flair``, ``_t1``, ``_t1ce``, ``_t2``   by name          brats2021
nnunet     ``<id>_0000`` ... ``_0003``                       ``dataset.json`` msd
dicom      DICOM studies, one case per study                  from the headers msd
========== ================================================= ================ ================

``auto`` tells them apart by the file names and refuses a folder that mixes them; a folder with no
NIfTI file but DICOM files under it is ``dicom``: each contrast is the study's series identified as
it from its acquisition attributes (:mod:`medseg.data.sources.dicom`), the output is written on the
grid of the first channel's series, plus a DICOM SEG object referencing it when highdicom is
installed. Per-contrast
files are matched to the artifact's channel list by NAME, never by file order, through
:data:`CONTRAST_ALIASES` (BraTS 2023 ``t2f`` is FLAIR, ``t1n`` T1w, ``t1c`` T1 with gadolinium,
``t2w`` T2w; BraTS 2021 ``flair``, ``t1``, ``t1ce``, ``t2``); nnU-Net indices get their names from
the ``channel_names`` (v2) or ``modality`` (v1) of a ``dataset.json`` in the input folder or its
parent, else the artifact's own order. Label files (``-seg``, ``_seg``) are ignored. A case missing
a contrast is predicted (that channel zero) only when the model was trained for that subset
(:mod:`medseg.inference.missing`), and otherwise fails alone, naming the missing contrast and its
file. The output is ``<id>.nii.gz`` on the grid of the first channel file, in the coding asked for
(``--labels`` / ``predict.labels``).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.config import InputLayout, OutputCoding
from medseg.data.io.dicom import is_dicom_image, looks_like_dicom
from medseg.data.io.nifti import read_header
from medseg.data.labels import INTERNAL_LABELS, LabelSpec, five_label_coding
from medseg.data.sources.base import Case, CaseRef, Source, check_nifti_case, walk_files
from medseg.errors import ConfigError, DataError
from medseg.inference.datasets import dicom_inputs
from medseg.inference.runtime import InputCase, Loaded, file_inputs
from medseg.utils.files import read_json

log = logging.getLogger(__name__)

_NIFTI = re.compile(r"\.nii(\.gz)?$")
_LABEL_FILE = re.compile(r"[-_]seg\.nii(\.gz)?$")

#: Normalised contrast name (lower case, letters and digits only) -> the contrast it denotes.
CONTRAST_ALIASES: dict[str, str] = {
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1",
    "t1gd": "t1gd", "t1c": "t1gd", "t1ce": "t1gd", "t1post": "t1gd", "t1contrast": "t1gd", "t1wgd": "t1gd",
    "t2": "t2", "t2w": "t2",
}


@dataclass(frozen=True)
class PerContrastLayout:
    """A layout with one NIfTI file per contrast, named ``<id><separator><token>.nii[.gz]``."""

    name: str
    regex: re.Pattern[str]  # groups: case, token
    tokens: tuple[str, ...]  # contrast tokens; () for numbered channels (nnU-Net)
    separator: str  # between the case id and the token
    example: str  # how the files look, for messages

    def match(self, file_name: str) -> tuple[str, str] | None:
        """``(case id, contrast token)`` of a file name, or ``None``."""
        m = self.regex.match(file_name)
        return (m["case"], m["token"]) if m else None


PER_CONTRAST: dict[str, PerContrastLayout] = {
    "brats2023": PerContrastLayout("brats2023", re.compile(r"(?P<case>.+)-(?P<token>t1n|t1c|t2w|t2f)\.nii(\.gz)?$"),
                                   ("t1n", "t1c", "t2w", "t2f"), "-", "<id>-t1n/-t1c/-t2w/-t2f.nii.gz"),
    "brats2021": PerContrastLayout("brats2021", re.compile(r"(?P<case>.+)_(?P<token>flair|t1ce|t1|t2)\.nii(\.gz)?$"),
                                   ("flair", "t1", "t1ce", "t2"), "_", "CASE/CASE_flair/_t1/_t1ce/_t2.nii.gz"),
    "nnunet": PerContrastLayout("nnunet", re.compile(r"(?P<case>.+)_(?P<token>\d{4})\.nii(\.gz)?$"),
                                (), "_", "<id>_0000..<id>_0003.nii.gz"),
}

#: Output coding that matches each input convention (``predict.labels=auto``).
DEFAULT_CODING: dict[str, str] = {"nifti4d": "msd", "brats2023": "brats2023", "brats2021": "brats2021",
                                  "nnunet": "msd"}


def contrast_key(name: str) -> str:
    """The contrast a channel or file token names (:data:`CONTRAST_ALIASES`); other names
    normalised (lower case, letters and digits only)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return CONTRAST_ALIASES.get(key, key)


def nifti_files(folder: Path) -> list[Path]:
    """NIfTI files in ``folder`` and in its immediate subfolders (case folders), hidden ones and
    label files (``-seg``/``_seg``) left out, sorted."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        children = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        found += [f for f in children if f.is_file() and not f.name.startswith(".") and _NIFTI.search(f.name)
                  and not _LABEL_FILE.search(f.name)]
    return found


def classify(file_name: str) -> str:
    """The layout a file name belongs to (``nifti4d`` when no per-contrast naming matches)."""
    return next((name for name, lay in PER_CONTRAST.items() if lay.match(file_name)), "nifti4d")


def detect_layout(inputs: Path) -> str:
    """The layout of an input folder, told apart by the file names (a file or a ``.txt`` list:
    ``nifti4d``).

    Raises:
        DataError: no NIfTI files and no DICOM files, or files of more than one layout (NIfTI
            images beside DICOM images included: label files other than ``-seg``/``_seg`` would
            otherwise be read as images; DICOM objects that hold no image, such as a DICOMDIR,
            a SEG or an RTSTRUCT, do not count).
    """
    if not inputs.is_dir():
        return "nifti4d"
    kinds: dict[str, list[Path]] = {}
    for f in nifti_files(inputs):
        kinds.setdefault(classify(f.name), []).append(f)
    others = (f for f in walk_files(inputs) if not _NIFTI.search(f.name))
    if not kinds:
        if any(looks_like_dicom(f) for f in others):  # one file tells; scanning them all is the source's work
            return "dicom"
        raise DataError(inputs, "no NIfTI files (*.nii.gz, *.nii) in the folder or its case folders, "
                                "and no DICOM files under it")
    image = next((f for f in others if is_dicom_image(f)), None)  # headers read until the first image
    if len(kinds) > 1 or image is not None:
        found = "; ".join([f"{len(fs)} {k} file(s) such as {fs[0].relative_to(inputs)}"
                           for k, fs in sorted(kinds.items())]
                          + ([f"DICOM images such as {image.relative_to(inputs)}"] if image else []))
        raise DataError(inputs, f"mixes input layouts ({found}); keep one layout per folder, or name one "
                                f"with --layout / predict.layout")
    layout, files = next(iter(kinds.items()))
    if layout == "nnunet" and len(read_header(files[0]).shape) == 4:
        return "nifti4d"  # 4D files that happen to end in _NNNN (patient_0001.nii.gz): one case each
    return layout


def nnunet_channel_names(inputs: Path) -> dict[str, str] | None:
    """Token (``0000``) -> channel name from a ``dataset.json`` in ``inputs`` or its parent
    (``channel_names`` of nnU-Net v2, ``modality`` of v1); ``None`` when there is none."""
    for path in (inputs / "dataset.json", inputs.parent / "dataset.json"):
        if path.is_file():
            obj = read_json(path)
            names = (obj.get("channel_names") or obj.get("modality")) if isinstance(obj, dict) else None
            if not isinstance(names, dict) or not names:
                raise DataError(path, "has no channel_names (nnU-Net v2) or modality (v1) mapping")
            return {f"{int(k):04d}": str(v) for k, v in names.items()}
    return None


def channel_tokens(layout: PerContrastLayout, channels: Sequence[str], inputs: Path) -> list[str]:
    """The file token of each artifact channel, in the artifact's order, matched by name.

    Raises:
        ConfigError: a channel no file of the layout can give, or two channels that map onto one.
    """
    if layout.tokens:
        names = {t: t for t in layout.tokens}
    else:
        names = nnunet_channel_names(inputs)
        if names is None:
            log.info("%s: no dataset.json; nnU-Net channel files _0000.. taken in the artifact's order %s",
                     inputs, list(channels))
            return [f"{i:04d}" for i in range(len(channels))]
    tokens = []
    for channel in channels:
        hits = [t for t, n in names.items() if contrast_key(n) == contrast_key(channel)]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)} ({', '.join(hits)})"
            raise ConfigError(f"{inputs}: the model's channel {channel!r} matches {what} {layout.name} contrast(s) "
                              f"among {', '.join(f'{t}={n}' for t, n in names.items())}")
        tokens.append(hits[0])
    return tokens


class PerContrastSource(Source):
    """The cases of an input folder with one file per contrast, loaded in the artifact's channel
    order and checked like any dataset's (readable, finite, channels on one grid).

    Args:
        root: the input folder.
        layout: the file naming.
        channels: the artifact's channel names, in its order.
    """

    def __init__(self, root: Path, layout: PerContrastLayout, channels: Sequence[str]) -> None:
        super().__init__(root)
        self.layout = layout
        self.channels = tuple(channels)
        self.tokens = channel_tokens(layout, channels, root)

    def groups(self) -> dict[str, dict[str, list[Path]]]:
        """Case id -> contrast token -> the files giving it (more than one is a problem)."""
        out: dict[str, dict[str, list[Path]]] = {}
        ignored = []
        for f in nifti_files(self.root):
            hit = self.layout.match(f.name)
            if hit is None:
                ignored.append(f.name)
                continue
            out.setdefault(hit[0], {}).setdefault(hit[1], []).append(f)
        if ignored:
            log.warning("%s: %d file(s) not named %s ignored, e.g. %s", self.root, len(ignored),
                        self.layout.example, ignored[0])
        return out

    def cases(self) -> list[CaseRef]:
        """One case per id, its images the files of the model's channels it has, in the model's
        order; a contrast given by two files is recorded as the case's problem."""
        refs, groups = [], self.groups()
        for case, files in sorted(groups.items()):
            problems = [f"{fs[0]}: contrast {t} is given by {len(fs)} files ({', '.join(f.name for f in fs)})"
                        for t, fs in files.items() if len(fs) > 1 and t in self.tokens]
            images = tuple(files[t][0] for t in self.tokens if t in files)
            folder = next(iter(files.values()))[0].parent
            refs.append(CaseRef(name=case, images=images or (folder,), split="test", problems=tuple(problems)))
        unused = sorted({t for files in groups.values() for t in files} - set(self.tokens))
        if unused and not self.layout.tokens:
            log.warning("%s: channel files _%s belong to none of the model's channels %s: ignored",
                        self.root, ", _".join(unused), list(self.channels))
        return refs

    def present(self, ref: CaseRef) -> tuple[str, ...]:
        """The model's channels a case has files for, in the model's order."""
        tokens = {hit[1] for f in ref.images if (hit := self.layout.match(f.name))}
        return tuple(c for c, t in zip(self.channels, self.tokens) if t in tokens)

    def expected_file(self, ref: CaseRef, channel: str) -> Path:
        """Where the file of a model channel would be, named as the layout names it."""
        token = self.tokens[self.channels.index(channel)]
        folder = ref.images[0] if ref.images[0].is_dir() else ref.images[0].parent
        return folder / f"{ref.name}{self.layout.separator}{token}.nii.gz"

    def check(self, ref: CaseRef) -> tuple[Case | None, list[str]]:
        """Load the channels a case has (see :func:`check_nifti_case`), listing every problem."""
        if ref.problems:
            return None, list(ref.problems)
        view = copy.copy(self)
        view.channels = self.present(ref)
        return check_nifti_case(view, ref)

    def load_full(self, ref: CaseRef) -> Loaded:
        """The case in the model's channel order, missing channels as zeros (see
        :mod:`medseg.inference.missing`), with the first file's affine and header."""
        case = self.load(ref)
        present = self.present(ref)
        image = np.zeros((len(self.channels), *case.image.shape[1:]), dtype=case.image.dtype)
        for data, channel in zip(case.image, present):
            image[self.channels.index(channel)] = data
        return image, case.affine, read_header(ref.images[0])


def per_contrast_inputs(inputs: Path, layout: str, channels: Sequence[str]) -> list[InputCase]:
    """The cases of a per-contrast folder. A case lacking a model channel names it in
    ``missing_channels`` (the model's accepted subsets decide, see :mod:`medseg.inference.missing`),
    its path being the expected file of the first missing contrast, so that a refusal names it."""
    if not inputs.is_dir():
        raise DataError(inputs, f"layout {layout} needs a folder of per-contrast files "
                                f"({PER_CONTRAST[layout].example})")
    source = PerContrastSource(inputs, PER_CONTRAST[layout], channels)
    refs = source.cases()
    if not refs:
        raise DataError(inputs, f"no files named {PER_CONTRAST[layout].example}")
    items = []
    for ref in refs:
        missing = tuple(c for c in source.channels if c not in source.present(ref))
        expected = [source.expected_file(ref, c) for c in missing]
        items.append(InputCase(ref.name, expected[0] if expected else ref.images[0],
                               functools.partial(source.load_full, ref), missing_channels=missing,
                               details={"missing_files": [f.name for f in expected]} if expected else {}))
    return items


def discover_inputs(inputs: Path, layout: str, channels: Sequence[str], pattern: str = "*.nii.gz",
                    series_patterns: Mapping[str, str] | None = None, series_mapping: str | Path | None = None
                    ) -> tuple[list[InputCase], str]:
    """The cases of ``inputs`` in ``layout`` (``auto``: :func:`detect_layout`) and the layout used.

    Args:
        inputs: a folder, a ``.txt`` list of 4D files, or one 4D file.
        layout: an :class:`~medseg.config.InputLayout` value.
        channels: the artifact's channel names, in its order.
        pattern: ``nifti4d`` only: which files of the folder are cases.
        series_patterns, series_mapping: ``dicom`` only: see :func:`~medseg.inference.datasets.dicom_inputs`.

    Raises:
        DataError: nothing to predict, or a folder mixing layouts (``auto``).
        ConfigError: the model's channels cannot be found among the layout's contrasts; DICOM
            options for another layout.
    """
    if not inputs.exists():
        raise DataError(inputs, "input not found")
    if layout == InputLayout.auto.value:
        layout = detect_layout(inputs)
        log.info("%s: input layout %s", inputs, layout)
    if (series_patterns or series_mapping) and layout != InputLayout.dicom.value:
        raise ConfigError(f"series patterns and mappings choose DICOM series; {inputs} is read in the {layout} layout")
    if layout == InputLayout.nifti4d.value:
        return file_inputs(inputs, pattern, len(channels)), layout
    if layout == InputLayout.dicom.value:
        if not inputs.is_dir():
            raise DataError(inputs, "the dicom layout reads a folder of DICOM studies, not a file")
        return dicom_inputs(inputs, channels, series_patterns, series_mapping), layout
    if layout not in PER_CONTRAST:
        raise ConfigError(f"input layout {layout!r} is not known; valid: {[x.value for x in InputLayout]}")
    return per_contrast_inputs(inputs, layout, channels), layout


def output_coding(requested: str, input_convention: str, labels: LabelSpec) -> str:
    """The label coding to write: ``requested``, or for ``auto`` the input's own convention (a
    layout of :data:`DEFAULT_CODING` or a label convention; msd for any other).

    Raises:
        ConfigError: a BraTS coding asked of a model whose labels are not the BraTS tumour labels.
    """
    codings = [c.value for c in OutputCoding if c != OutputCoding.auto]
    if requested == OutputCoding.auto.value and not set(labels.labels) <= set(INTERNAL_LABELS):
        return five_label_coding(input_convention, labels)  # BraTS 2024+ sets (resection cavity, ...)
    if requested != OutputCoding.auto.value:
        coding = requested
    else:
        coding = DEFAULT_CODING.get(input_convention, input_convention if input_convention in codings else "msd")
    if coding not in codings:
        raise ConfigError(f"label coding {coding!r} is not known; valid: {[c.value for c in OutputCoding]}")
    if coding != "msd" and dict(labels.labels) != INTERNAL_LABELS:
        if requested == OutputCoding.auto.value:
            return "msd"  # e.g. a lesion model on BraTS-named files: its own codes
        raise ConfigError(f"--labels/predict.labels={coding} needs a model of the BraTS tumour labels "
                          f"{INTERNAL_LABELS}; this one predicts {dict(labels.labels)}")
    return coding


def describe_layouts() -> Mapping[str, str]:
    """Layout -> how its files look (for help texts)."""
    return {"nifti4d": "<case>.nii.gz, 4D channels last", **{k: v.example for k, v in PER_CONTRAST.items()},
            "dicom": "DICOM studies (one case per study, each contrast's series identified from its headers)"}
