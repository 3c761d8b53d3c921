"""Pipeline stages. Each is ``<name>_stage(cfg, out_dir) -> summary dict``; :func:`run_stage`
runs one inside Hydra's output folder with medseg's error handling.

A stage's module is imported when the stage is looked up (:func:`stage_function`), so that
``medseg prepare`` does not import the network, report and export code of the other stages, and
``medseg <stage> --cfg job`` imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medseg.stages.common import run_stage

#: stage name -> (module under medseg.stages, function)
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "prepare_stage"),
    "train": ("train", "train_stage"),
    "evaluate": ("evaluate", "evaluate_stage"),
    "export": ("export", "export_stage"),
    "predict": ("predict", "predict_stage"),
    "run": ("run", "run_stage_all"),
}


def stage_function(name: str) -> Callable[..., dict[str, Any]]:
    """The function of stage ``name`` (its module imported now)."""
    module, function = STAGES[name]
    return getattr(importlib.import_module(f"medseg.stages.{module}"), function)


__all__ = ["STAGES", "run_stage", "stage_function"]
