"""``run``: the whole pipeline, each stage in its own sub-folder of the run directory.

``synth`` (only when ``synth.enabled``: writes the built-in dataset to ``data.root``) ->
``prepare`` -> ``train`` -> ``evaluate`` -> ``export`` -> ``predict`` (the exported artifact on the
test images). The summary holds each stage's summary and the test Dice per region.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from medseg.config import choice
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_dataset
from medseg.stages.common import run_in_dir
from medseg.stages.evaluate import evaluate_stage
from medseg.stages.export import export_stage
from medseg.stages.predict import predict_stage
from medseg.stages.prepare import prepare_stage
from medseg.stages.train import train_stage
from medseg.utils.files import read_json, write_text

log = logging.getLogger(__name__)


def synthesize(cfg: DictConfig) -> Path:
    """Write the built-in dataset described by ``cfg.synth`` into ``cfg.data.root``."""
    root = Path(cfg.data.root)
    s = cfg.synth
    layout = choice(s.layout)
    log.info("synth: writing %d built-in cases (%s layout) to %s", s.n, layout, root)
    return write_dataset(root, SynthConfig(n=int(s.n), n_test=int(s.n_test) if layout == "msd" else 0,
                                           spacing=float(s.spacing), seed=int(s.seed)), layout)


def run_stage_all(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run every stage in order (see module docstring)."""
    if cfg.synth.enabled:
        synthesize(cfg)
    summaries: dict[str, Any] = {}
    with open_dict(cfg):
        summaries["prepare"] = run_in_dir(prepare_stage, cfg, out_dir / "prepare", clean_dir=True)
        cfg.paths.prepared = str(out_dir / "prepare")
        summaries["train"] = run_in_dir(train_stage, cfg, out_dir / "train", clean_dir=True)
        cfg.paths.checkpoint = summaries["train"]["best_checkpoint"]
        summaries["evaluate"] = run_in_dir(evaluate_stage, cfg, out_dir / "evaluate", clean_dir=True)
        cfg.paths.metrics = str(out_dir / "evaluate" / "metrics.json")
        summaries["export"] = run_in_dir(export_stage, cfg, out_dir / "export", clean_dir=True)
        cfg.paths.artifact = summaries["export"]["artifact"]
        datalist = read_json(out_dir / "prepare" / "datalist.json")
        if choice(cfg.data.source) == "msd":
            cfg.paths.input = str(write_text(out_dir / "predict_inputs.txt",
                                             "\n".join(e["source_images"][0] for e in _test_split(datalist)) + "\n"))
        else:  # read the test cases from the dataset itself (BraTS folders, DICOM, X-ray, ...)
            cfg.predict.source = "data"
            cfg.predict.cases = [e["name"] for e in _test_split(datalist)]
            cfg.paths.input = str(cfg.data.root)
        summaries["predict"] = run_in_dir(predict_stage, cfg, out_dir / "predict", clean_dir=True)
    dice = summaries["evaluate"]["dice"]
    log.info("run finished. Test-set Dice per region: %s",
             ", ".join(f"{k} {v:.4f}" for k, v in dice.items()))
    return {"test_dice": dice, "test_hd95_mm": summaries["evaluate"]["hd95_mm"], "stages": summaries}


def _test_split(datalist: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries of the test split (validation if there is no test split)."""
    return datalist.get("test") or datalist.get("validation") or datalist["train"]
