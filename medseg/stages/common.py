"""What every stage shares: running one with error handling, and writing its config and summary."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.config import MedsegConfig, to_typed
from medseg.errors import ConfigError, MedsegError, PartialFailure
from medseg.utils.files import to_json, write_json, write_text

log = logging.getLogger(__name__)

#: A stage: ``fn(cfg, out_dir)`` returning its summary dict, or a typed result whose ``summary``
#: (an attribute or a method) is that dict.
StageFn = Callable[[MedsegConfig, Path], Any]

#: Files a failed stage keeps in its folder: Hydra's record of the run, the log, and the
#: verification report of ``prepare`` (complete files that say why the stage failed).
_KEEP_ON_FAILURE = {".hydra", "verification.json", "verification.txt"}


def run_stage(fn: StageFn, cfg: DictConfig | MedsegConfig) -> dict[str, Any]:
    """Run ``fn(cfg, out_dir)`` in the Hydra output folder and return its summary.

    The config reaches the stage as :class:`~medseg.config.MedsegConfig` dataclasses. On a
    :class:`~medseg.errors.MedsegError` the error is logged as one line, everything the stage
    wrote is removed (Hydra's ``.hydra/`` record and the log stay) and the process exits with
    status 2 — no traceback, no partial outputs.
    """
    name = _stage_name(fn)
    try:
        typed = to_typed(cfg)
        logging.getLogger("medseg").setLevel(typed.log_level.upper())
        return run_in_dir(fn, typed, Path(typed.paths.output_dir), clean_dir=False)[1]
    except MedsegError as e:
        log.error("%s failed: %s", name, " ".join(str(e).split()))
        raise SystemExit(2) from None


def run_in_dir(fn: StageFn, cfg: DictConfig | MedsegConfig, out_dir: Path, clean_dir: bool,
               name: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Run a stage into ``out_dir``; on a MedsegError remove what it wrote and re-raise.

    Args:
        fn: the stage function (see :data:`StageFn`).
        cfg: the full config (converted to :class:`~medseg.config.MedsegConfig`).
        out_dir: stage output folder.
        clean_dir: remove the whole folder on failure (sub-stage folders of ``run``); otherwise
            keep Hydra's ``.hydra/`` and ``*.log`` files.
        name: the stage's name in its summary (default: from ``fn``).

    Returns:
        ``(result, summary)``: what ``fn`` returned and the summary written to ``summary.json``
        (with the stage name and its seconds).
    """
    typed = to_typed(cfg)
    existed = out_dir.exists()
    before = set(out_dir.iterdir()) if existed else set()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = fn(typed, out_dir)
    except PartialFailure:
        raise  # the cases that finished keep their outputs
    except MedsegError:
        _remove_outputs(out_dir, before, clean_dir and not existed)
        raise
    summary = {"stage": name or _stage_name(fn), "seconds": round(time.perf_counter() - start, 3),
               **summary_of(result)}
    write_stage_record(out_dir, typed, summary)
    return result, summary


def summary_of(result: Any) -> dict[str, Any]:
    """The summary dict of a stage's result (a dict, or a typed result with ``summary``)."""
    if isinstance(result, dict):
        return result
    summary = getattr(result, "summary", None)
    return dict(summary() if callable(summary) else summary)


def _remove_outputs(out_dir: Path, before: set[Path], whole: bool) -> None:
    for p in out_dir.iterdir():
        if p in before or p.name in _KEEP_ON_FAILURE or (p.suffix == ".log" and not whole):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if whole and not any(out_dir.iterdir()):
        out_dir.rmdir()


def write_stage_record(out_dir: Path, cfg: MedsegConfig, summary: dict[str, Any]) -> None:
    """Write ``config.yaml`` (resolved) and ``summary.json`` into ``out_dir``."""
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(plain(cfg)))
    write_json(out_dir / "summary.json", summary)


def _stage_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", "stage")
    return name.removesuffix("_stage_all").removesuffix("_stage")


def require_path(cfg: MedsegConfig, key: str, stage: str, must_exist: bool = True) -> Path:
    """Return ``cfg.paths.<key>`` as a Path, or explain how to pass it."""
    value = getattr(cfg.paths, key, None)
    if value in (None, "", "???"):
        raise ConfigError(f"{stage} needs paths.{key}=PATH (the output folder of the stage before it)")
    path = Path(str(value))
    if must_exist and not path.exists():
        raise ConfigError(f"paths.{key}={path}: not found")
    return path


def plain(obj: Any) -> Any:
    """A DictConfig/ListConfig or a schema dataclass (enums included) as plain JSON-ready data."""
    import dataclasses
    import json

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = OmegaConf.structured(obj)
    if isinstance(obj, DictConfig) or OmegaConf.is_config(obj):
        obj = OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    return json.loads(to_json(obj))
