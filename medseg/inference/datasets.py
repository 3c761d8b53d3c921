"""Prediction inputs read from a dataset folder with a ``data`` source (any layout, DICOM studies
too): ``medseg predict predict.source=data`` and the ``dicom`` input layout of ``medseg-predict``
(:func:`dicom_inputs`: the DICOM source's contrast identification, with its hints or a mapping
file)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg.config import DataConfig, SourceKind, choice
from medseg.data.contrasts import identification_json, missing_files, stand_in, zero_channels
from medseg.data.sources import CaseRef, build_source
from medseg.errors import ConfigError, DataError, MedsegError
from medseg.inference.runtime import InputCase, Loaded

log = logging.getLogger(__name__)


def dataset_inputs(data_cfg: Any, inputs: Path, channels: Sequence[str], cases: Sequence[str] = ()
                   ) -> tuple[list[InputCase], str]:
    """Cases of a dataset folder read with the ``data`` source settings (any layout, DICOM too),
    and the label convention of the source (for ``predict.labels=auto``).

    Args:
        data_cfg: the ``data`` section (source kind and options).
        inputs: the dataset folder.
        channels: the channels the model expects, in order.
        cases: only these cases (empty: all).

    Files the source could not read (``scan_problems``) follow the cases as entries that fail
    with their message (:func:`unreadable_file`), unless ``cases`` picks cases by name.

    Raises:
        DataError: the source gives other channels, some ``cases`` are not in the dataset, or there
            is no case at all (naming the files the source could not read, if any).
    """
    source = build_source(data_cfg, inputs)
    if tuple(source.channels) != tuple(channels):
        raise DataError(inputs, f"the {choice(data_cfg.source)} source gives channels {list(source.channels)}, "
                                f"the model expects {list(channels)}")
    source.allow_missing = True  # a study without a series: the artifact's accepted subsets decide
    wanted = set(cases)
    refs = [with_stand_ins(replace(r, label=None), source.channels) for r in source.cases()
            if not wanted or r.name in wanted]
    missing = wanted - {r.name for r in refs}
    if missing:
        raise DataError(inputs, f"predict.cases {sorted(missing)} are not in the dataset")
    problems = list(getattr(source, "scan_problems", []))
    if not refs:
        raise DataError(inputs, "no case to predict" + (
            f": {len(problems)} file(s) could not be read, such as {problems[0]}" if problems else ""))
    if problems:  # unreadable files beside the studies: each a failed entry of the batch, the cases go on
        log.warning("%s: %d file(s) could not be read, such as %s", inputs, len(problems), problems[0])

    def loader(ref: CaseRef) -> Callable[[], Loaded]:
        def load() -> Loaded:
            case = source.load(ref)
            return zero_channels(case.image, source.channels, ref.missing), case.affine, None
        return load

    # a case whose problems left it without files (e.g. two candidate series for a channel) fails
    # alone when loaded, with its problems; its study folder names it until then
    items = [InputCase(r.name, r.images[0] if r.images else r.folder or inputs, loader(r),
                       tuple(r.series[0]) if r.series else (),
                       missing_channels=r.missing,
                       details={"contrasts": identification_json(r)} if r.identification else {}) for r in refs]
    return items + [unreadable_file(i, problem, inputs) for i, problem in enumerate(problems, start=1)
                    if not wanted], source.convention


def unreadable_file(number: int, problem: str, inputs: Path) -> InputCase:
    """A file the source could not read (``problem`` names it), as a batch entry that fails with
    that message: reported in ``predictions.json`` and in the exit status like a bad case, while
    the cases around it are predicted."""
    def load() -> Loaded:
        raise MedsegError(problem)
    return InputCase(f"unreadable-file-{number}", inputs, load)


def with_stand_ins(ref: CaseRef, channels: Sequence[str]) -> CaseRef:
    """``ref`` with a present channel's files standing in for each missing one (at least one present;
    see :func:`medseg.data.contrasts.stand_in`)."""
    missing = missing_files(ref, channels)
    if not missing or len(missing) == len(channels) or ref.missing:
        return ref
    return stand_in(ref, channels, missing)


def dicom_inputs(inputs: Path, channels: Sequence[str], series_patterns: Mapping[str, str] | None = None,
                 series_mapping: str | Path | None = None) -> list[InputCase]:
    """The DICOM studies under ``inputs`` as cases (one per study): each of ``channels`` is the
    series identified as that contrast by its acquisition attributes (:mod:`medseg.data.contrasts`).

    Args:
        inputs: folder of DICOM studies.
        channels: the channels the model expects, in order.
        series_patterns: SeriesDescription hints that replace the defaults
            (:data:`medseg.config.DEFAULT_SERIES_PATTERNS`) channel by channel.
        series_mapping: JSON file ``{case or StudyInstanceUID: {channel: SeriesInstanceUID or
            SeriesDescription}}`` that overrides the identification (relative to the working folder).

    Raises:
        ConfigError: a pattern for a channel the model does not have, empty, or not a regular
            expression.
        DataError: no series is identified as any channel (naming the series found), an
            unreadable mapping file, or one that names channels the model does not have.
    """
    unknown = sorted(set(series_patterns or {}) - set(channels))
    if unknown:
        raise ConfigError(f"series patterns for {unknown}, which are not channels of the model {list(channels)}")
    cfg = DataConfig(source=SourceKind.dicom, root=str(inputs), channels=list(channels), label_dir=None,
                     series_patterns=dict(series_patterns or {}),  # the source fills in the defaults
                     series_mapping=str(Path(series_mapping).resolve()) if series_mapping else None)
    return dataset_inputs(cfg, inputs, channels)[0]
