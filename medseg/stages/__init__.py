"""Pipeline stages. Each is ``<name>_stage(cfg, out_dir) -> summary dict``; :func:`run_stage`
runs one inside Hydra's output folder with medseg's error handling."""

from medseg.stages.common import run_stage
from medseg.stages.evaluate import evaluate_stage
from medseg.stages.export import export_stage
from medseg.stages.predict import predict_stage
from medseg.stages.prepare import prepare_stage
from medseg.stages.run import run_stage_all
from medseg.stages.train import train_stage

STAGES = {
    "prepare": prepare_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "export": export_stage,
    "predict": predict_stage,
    "run": run_stage_all,
}

__all__ = ["STAGES", "run_stage", "prepare_stage", "train_stage", "evaluate_stage", "export_stage",
           "predict_stage", "run_stage_all"]
