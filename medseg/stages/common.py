"""What every stage shares: running one with error handling, and writing its config and summary."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.errors import ConfigError, MedsegError, PartialFailure
from medseg.utils.files import to_json, write_json, write_text

log = logging.getLogger(__name__)

StageFn = Callable[[DictConfig, Path], dict[str, Any]]

#: Files a failed stage keeps in its folder: Hydra's record of the run, the log, and the
#: verification report of ``prepare`` (complete files that say why the stage failed).
_KEEP_ON_FAILURE = {".hydra", "verification.json", "verification.txt"}


def run_stage(fn: StageFn, cfg: DictConfig) -> dict[str, Any]:
    """Run ``fn(cfg, out_dir)`` in the Hydra output folder and return its summary.

    On a :class:`~medseg.errors.MedsegError` the error is logged as one line, everything the stage
    wrote is removed (Hydra's ``.hydra/`` record and the log stay) and the process exits with
    status 2 — no traceback, no partial outputs.
    """
    out_dir = Path(cfg.paths.output_dir)
    logging.getLogger("medseg").setLevel(str(cfg.get("log_level", "INFO")).upper())
    try:
        return run_in_dir(fn, cfg, out_dir, clean_dir=False)
    except MedsegError as e:
        log.error("%s failed: %s", _stage_name(fn), e)
        raise SystemExit(2) from None


def run_in_dir(fn: StageFn, cfg: DictConfig, out_dir: Path, clean_dir: bool) -> dict[str, Any]:
    """Run a stage into ``out_dir``; on a MedsegError remove what it wrote and re-raise.

    Args:
        fn: the stage function.
        cfg: the full config.
        out_dir: stage output folder.
        clean_dir: remove the whole folder on failure (sub-stage folders of ``run``); otherwise
            keep Hydra's ``.hydra/`` and ``*.log`` files.
    """
    existed = out_dir.exists()
    before = set(out_dir.iterdir()) if existed else set()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        summary = fn(cfg, out_dir)
    except PartialFailure:
        raise  # the cases that finished keep their outputs
    except MedsegError:
        _remove_outputs(out_dir, before, clean_dir and not existed)
        raise
    summary = {"stage": _stage_name(fn), "seconds": round(time.perf_counter() - start, 3), **summary}
    write_stage_record(out_dir, cfg, summary)
    return summary


def _remove_outputs(out_dir: Path, before: set[Path], whole: bool) -> None:
    for p in out_dir.iterdir():
        if p in before or p.name in _KEEP_ON_FAILURE or (p.suffix == ".log" and not whole):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if whole and not any(out_dir.iterdir()):
        out_dir.rmdir()


def write_stage_record(out_dir: Path, cfg: DictConfig, summary: dict[str, Any]) -> None:
    """Write ``config.yaml`` (resolved) and ``summary.json`` into ``out_dir``."""
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json(out_dir / "summary.json", summary)


def _stage_name(fn: Callable) -> str:
    return getattr(fn, "__name__", "stage").removesuffix("_stage")


def require_path(cfg: DictConfig, key: str, stage: str, must_exist: bool = True) -> Path:
    """Return ``cfg.paths.<key>`` as a Path, or explain how to pass it."""
    value = cfg.paths.get(key)
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
