"""``export``: TorchScript + ONNX artifact with its metadata, proven equal to the eager model.

Inputs: ``paths.checkpoint``; optional ``paths.prepared`` (a real case for the parity check and the
training-data fingerprint of the model card) and ``paths.metrics`` (evaluate's ``metrics.json``,
copied into the metadata and the model card).
Outputs: ``artifact/`` with ``model.ts``, ``model.onnx`` (``export.onnx``), ``MODEL_CARD.md``,
``medseg_bundle/`` (``export.bundle``) and ``metadata.json`` (see :mod:`medseg.export.artifact`);
``summary.json`` with the parity figures of every format. Export fails if any format's logits or
labels differ from the eager model's beyond ``export.logit_tolerance`` /
``export.min_label_agreement`` (:mod:`medseg.export.parity`).

With ``calibration.enabled`` and ``paths.prepared``, the temperature and the QC thresholds are
fitted on the validation split (:mod:`medseg.export.review`) and recorded in ``metadata.json``
(``calibration``, ``qc``); ``summary.json`` states the temperature. With ``paths.prepared`` and
``evaluate.inference.min_enhancing_ml`` unset (null), the small-enhancing rule's threshold is fitted
on the validation split too (:mod:`medseg.inference.postprocess`) and recorded under
``postprocessing``; ``summary.json`` states it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg.config import ExportConfig
from medseg.data.prepared import PreparedDataset
from medseg.export.artifact import CARD_FILE, ONNX_FILE, ONNX_INT8_FILE, script_model, write_artifact
from medseg.export.bundle import write_bundle
from medseg.export.metadata import artifact_metadata, training_data
from medseg.export.model_card import model_card
from medseg.export.onnx import export_onnx, quantize_int8
from medseg.export.parity import check_formats, parity_inputs
from medseg.export.review import review_metadata
from medseg.inference.postprocess import EnhancingRule
from medseg.inference.targets import Target
from medseg.models.checkpoint import model_from_checkpoint
from medseg.stages.common import require_path
from medseg.utils.files import read_json, write_text

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """An exported artifact: its folder and the stage summary (parity figures, files)."""

    artifact: Path
    summary: dict[str, Any]


def export(cfg: Any, checkpoint: Path, prepared: PreparedDataset | None, metrics: Path | None,
           out_dir: Path) -> ExportResult:
    """Export ``checkpoint`` into ``out_dir/artifact`` and prove every format equal to the eager model.

    Args:
        cfg: the config (``export``, ``name``, ``evaluate.inference.min_component_ml``).
        checkpoint: ``best.pt`` of train.
        prepared: the prepared dataset (parity on a real case, training data of the model card).
        metrics: evaluate's ``metrics.json``, copied into the metadata and the model card.
        out_dir: the stage folder.

    Raises:
        ArtifactError: an exported format differs from the eager model beyond the tolerances.
    """
    model, meta = model_from_checkpoint(checkpoint)
    target = Target.from_checkpoint(meta)
    patch = [int(p) for p in meta.patch_size]
    example, image = parity_inputs(prepared, meta.in_channels, patch)
    scripted = script_model(model, example)
    metadata = artifact_metadata(str(cfg.name), meta, model, checkpoint, read_json(metrics) if metrics else None,
                                 min_component_ml=float(cfg.evaluate.inference.min_component_ml or 0.0))
    review = review_metadata(getattr(cfg, "calibration", None), cfg.evaluate.inference, checkpoint, prepared,
                             has_rule=EnhancingRule.for_labels(target.labels) is not None)
    metadata["postprocessing"].update(enhancing_postprocessing(cfg.evaluate.inference.min_enhancing_ml,
                                                               review.pop("enhancing", None), target))
    metadata.update(review)
    art_dir = out_dir / "artifact"
    write_formats(cfg.export, art_dir, model, example, scripted, metadata, training_data(prepared))
    parity = check_formats(cfg.export, model, art_dir, example, image, patch, target)
    for b, p in parity.items():
        log.info("export %s: max |logit diff| %.2e, label agreement %.6f", b, p["max_abs_logit_diff"],
                 p["label_agreement"])
    summary = {"artifact": str(art_dir), **parity["torch"], "parity": parity,
               "temperature": (metadata.get("calibration") or {}).get("temperature"),
               "min_enhancing_ml": metadata["postprocessing"].get("min_enhancing_ml"),
               "files": sorted(read_json(art_dir / "metadata.json")["files"])}
    return ExportResult(artifact=art_dir, summary=summary)


def enhancing_postprocessing(configured: float | None, fit: dict[str, Any] | None, target: Target) -> dict[str, Any]:
    """``metadata.json`` ``postprocessing`` fields of the small-enhancing rule: the threshold (the
    configured one, else the one fitted on validation, else 0: off), the codes it relabels and the
    fit's evidence (:mod:`medseg.inference.postprocess`); nothing for a label set without the rule."""
    rule = EnhancingRule.for_labels(target.labels)
    if rule is None:
        return {}
    ml = float(configured) if configured is not None else float(fit["min_enhancing_ml"]) if fit else 0.0
    return {"min_enhancing_ml": ml, "enhancing_codes": list(rule.codes), "enhancing_replacement": rule.replacement,
            "enhancing_fit": fit if configured is None else None}


def write_formats(export_cfg: ExportConfig, art_dir: Path, model: torch.nn.Module, example: torch.Tensor,
                  scripted: torch.jit.ScriptModule, metadata: dict[str, Any], training: dict[str, Any] | None) -> None:
    """Write ONNX (and int8), the MONAI bundle, the model card, then ``model.ts`` and
    ``metadata.json`` with the hashes of everything else."""
    art_dir.mkdir(parents=True, exist_ok=True)
    if export_cfg.onnx:
        export_onnx(model, example, art_dir / ONNX_FILE, int(export_cfg.opset))
        if export_cfg.int8:
            quantize_int8(art_dir / ONNX_FILE, art_dir / ONNX_INT8_FILE)
    if export_cfg.bundle:
        write_bundle(art_dir, model, metadata)
    write_text(art_dir / CARD_FILE, model_card(metadata, training))
    write_artifact(art_dir, scripted, metadata)


def export_stage(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Run the export stage (see module docstring)."""
    checkpoint = require_path(cfg, "checkpoint", "export")
    prepared = PreparedDataset.read(cfg.paths.prepared) if cfg.paths.prepared else None
    metrics = Path(cfg.paths.metrics) if cfg.paths.metrics else None
    return export(cfg, checkpoint, prepared, metrics, out_dir).summary
