"""``run``: the whole pipeline, each stage in its own sub-folder of the run directory.

``synth`` (only when ``synth.enabled``: writes the built-in dataset to ``data.root``) ->
``prepare`` -> ``train`` -> ``evaluate`` -> ``export`` -> ``predict`` (the exported artifact on the
cases of the evaluated split, read from the dataset itself). Each stage's typed result is passed to
the next: the :class:`~medseg.data.prepared.PreparedDataset`, the best checkpoint, the metrics, the
artifact. The summary holds each stage's summary and the Dice per region of the evaluated split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg.config import MedsegConfig, PredictSource, SynthLayout, choice
from medseg.data.prepared import PreparedDataset
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_dataset
from medseg.stages.common import run_in_dir
from medseg.stages.evaluate import evaluate_checkpoint
from medseg.stages.export import ExportResult, export
from medseg.stages.predict import predict
from medseg.stages.prepare import prepare
from medseg.stages.train import TrainResult, train

log = logging.getLogger(__name__)


def synthesize(cfg: MedsegConfig) -> Path:
    """Write the built-in dataset described by ``cfg.synth`` into ``cfg.data.root``."""
    s = cfg.synth
    layout = choice(s.layout)
    log.info("synth: writing %d built-in cases (%s layout) to %s", s.n, layout, cfg.data.root)
    n_test = s.n_test if s.layout == SynthLayout.msd else 0
    return write_dataset(Path(cfg.data.root), SynthConfig(n=s.n, n_test=n_test, spacing=s.spacing, seed=s.seed),
                         layout)


def run_stage_all(cfg: MedsegConfig, out_dir: Path) -> dict[str, Any]:
    """Run every stage in order (see module docstring)."""
    if cfg.synth.enabled:
        synthesize(cfg)
    summaries: dict[str, Any] = {}

    def step(name: str, fn: Any) -> Any:
        result, summaries[name] = run_in_dir(fn, cfg, out_dir / name, clean_dir=True, name=name)
        return result

    prepared: PreparedDataset = step("prepare", prepare)
    trained: TrainResult = step("train", lambda c, d: train(c, prepared, d))
    step("evaluate", lambda c, d: evaluate_checkpoint(c, trained.best_checkpoint, prepared, d))
    metrics = out_dir / "evaluate" / "metrics.json"
    exported: ExportResult = step("export", lambda c, d: export(c, trained.best_checkpoint, prepared, metrics, d))
    cases = [e["name"] for e in prepared.split(choice(cfg.evaluate.split))]
    step("predict", lambda c, d: predict(c, exported.artifact, Path(prepared.plan["source"]["root"]), d,
                                         cases=cases, source=PredictSource.data.value))
    dice = summaries["evaluate"]["dice"]
    log.info("run finished. %s-split Dice per region: %s", choice(cfg.evaluate.split),
             ", ".join(f"{k} {v:.4f}" for k, v in dice.items()))
    return {"test_dice": dice, "test_hd95_mm": summaries["evaluate"]["hd95_mm"],
            "split": choice(cfg.evaluate.split), "stages": summaries}
