"""What an artifact says about itself: ``metadata.json`` and the training data of the model card.

The metadata describes the inputs (channel names and order, spacing, orientation, normalisation,
patch size), the outputs (target mode, labels, regions, decoding), the network, the training
checkpoint, post-processing, evaluation metrics and library versions (see
:mod:`medseg.export.artifact` for the folder layout).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import torch

from medseg.data.prepared import PreparedDataset
from medseg.export.artifact import weights_sha256
from medseg.inference.targets import Target
from medseg.models.checkpoint import CheckpointMeta
from medseg.models.unet import architecture, count_parameters
from medseg.report.provenance import library_versions
from medseg.utils.files import sha256_file


def artifact_metadata(name: str, meta: CheckpointMeta, model: torch.nn.Module, checkpoint: Path,
                      metrics: dict[str, Any] | None, min_component_ml: float) -> dict[str, Any]:
    """The metadata of the artifact exported from ``checkpoint``.

    Args:
        name: the run's name.
        meta: the checkpoint's metadata.
        model: its network (eval mode).
        checkpoint: the checkpoint file (its sha256 is recorded).
        metrics: evaluate's ``metrics.json`` (summary and conventions are copied), or ``None``.
        min_component_ml: post-processing recorded for ``predict`` (``inference.min_component_ml``).
    """
    pre = meta.plan["preprocessing"]
    target = Target.from_checkpoint(meta)
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "name": name,
        "input": {"channels": pre["channels"], "axis_order": "(C, X, Y, Z) after reorientation to RAS",
                  "spacing_mm": pre["target_spacing"], "orientation": "RAS", "normalization": pre["normalization"],
                  "preprocessing": pre, "patch_size": [int(p) for p in meta.patch_size],
                  "accepted_subsets": meta.accepted_subsets or [list(pre["channels"])],
                  "missing_channel_value": "zero after normalisation",
                  "file_format": "NIfTI, 4D with channels last (MSD layout), voxel -> RAS affine"},
        "output": {**target.to_json(), "num_classes": int(meta.num_classes),
                   "decoding": "label = argmax over classes" if target.mode == "labels" else
                   "label = code of the innermost region with probability > 0.5"},
        "network": {"architecture": architecture(meta.model), "activation": "ReLU", **meta.model,
                    "parameters": count_parameters(model)},
        "training": {"epoch": meta.epoch, "iteration": meta.iteration, "validation_dice": meta.val,
                     "checkpoint_sha256": sha256_file(checkpoint)},
        "postprocessing": {"min_component_ml": float(min_component_ml)},
        "metrics": metrics.get("summary") if isinstance(metrics, dict) else None,
        "metrics_convention": metrics.get("convention") if isinstance(metrics, dict) else None,
        "versions": library_versions(),
        "weights_sha256": weights_sha256(model.state_dict()),
    }


def training_data(prepared: PreparedDataset | None) -> dict[str, Any] | None:
    """The training data recorded in the model card (``None`` without a fingerprint)."""
    if prepared is None or prepared.fingerprint is None:
        return None
    src = prepared.plan.get("source", {})
    return {"sha256": prepared.sha256(), "fingerprint": prepared.fingerprint, "split": prepared.counts,
            "source": f"{src.get('kind', '')} {src.get('root', '')} ({src.get('convention', '')} labels)"}
