"""``evaluate``: score segmentations on the native grid and write the report.

Two modes, one scoring path (:func:`medseg.metrics.scoring.score_predictions`):

- **checkpoint** (default): predict the ``evaluate.split`` split (``test`` by default; an empty
  split is an error, never a fallback) of ``paths.prepared`` with ``paths.checkpoint`` (``best.pt``
  of train) into ``predictions/<case>.nii.gz`` on each case's native grid, then score that folder
  against the dataset's own label files (read by its source, remapped to internal codes);
- **folders**: ``evaluate.predictions=DIR evaluate.references=DIR`` scores any folder of predicted
  label maps (nnU-Net's, a MONAI bundle's, anyone's) against references, matched by case name
  (see :mod:`medseg.metrics.external`); ``evaluate.labels`` gives the label coding of both.

Outputs: ``metrics.json`` (summary per structure with bootstrap CIs, per-case values, conventions,
data fingerprint, model sha256, provenance, config), ``metrics.csv`` (one row per case and
structure), ``detections.json``, ``report.md``, ``report.html`` (self-contained), ``figures/``.

Bad input: strict by default (one error naming the case and file). With
``evaluate.skip_bad=true`` a missing or unreadable prediction is scored as an empty prediction and
a case with an unreadable reference is left unscored; both are listed as failures in the report
and in ``metrics.json`` rather than dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medseg.config import choice
from medseg.data.io.nifti import write_nifti
from medseg.data.labels import LabelSpec, label_spec
from medseg.data.prepared import PreparedDataset
from medseg.errors import ConfigError, MedsegError
from medseg.inference.build import build_predictor
from medseg.inference.predictor import CasePredictor
from medseg.metrics.external import list_cases
from medseg.metrics.references import Reference, SourceReference, folder_references, source_references
from medseg.metrics.scoring import Scoring, log_summary, score_predictions
from medseg.report.evaluation import montage_loader, write_evaluation
from medseg.stages.common import plain, require_path
from medseg.utils.files import atomic_path, sha256_file

log = logging.getLogger(__name__)


def evaluate_stage(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """Run the evaluate stage (see module docstring)."""
    ev = cfg.evaluate
    if ev.predictions or ev.references:
        if not (ev.predictions and ev.references):
            raise ConfigError("scoring folders needs both evaluate.predictions=DIR and evaluate.references=DIR")
        images = Path(str(ev.images)).expanduser() if ev.images else None
        return evaluate_folders(cfg, Path(str(ev.predictions)).expanduser(), Path(str(ev.references)).expanduser(),
                                out_dir, images=images)
    checkpoint = require_path(cfg, "checkpoint", "evaluate")
    prepared = PreparedDataset.read(require_path(cfg, "prepared", "evaluate"))
    return evaluate_checkpoint(cfg, checkpoint, prepared, out_dir)


def evaluate_checkpoint(cfg: Any, checkpoint: Path, prepared: PreparedDataset, out_dir: Path) -> dict[str, Any]:
    """Predict the ``evaluate.split`` cases of ``prepared`` with ``checkpoint`` into
    ``out_dir/predictions/`` and score that folder against the dataset's label files.

    Returns:
        The stage summary (mean Dice and HD95 per region, paths of ``metrics.json`` and the report).

    Raises:
        DataError: an empty split, a case that cannot be read (unless ``evaluate.skip_bad``), no
            scorable case.
    """
    start = time.monotonic()
    names = [e["name"] for e in prepared.split(choice(cfg.evaluate.split))]
    predictor = build_predictor(cfg.evaluate.inference, checkpoint=checkpoint)
    references = source_references(prepared.refs(names), prepared.channels)
    pred_dir = out_dir / "predictions"
    extras = predict_cases(predictor, references, pred_dir, skip_bad=bool(cfg.evaluate.skip_bad))
    source = {"checkpoint": str(checkpoint), "prepared": str(prepared.folder)}
    files = list_cases(pred_dir, "predictions", allow_empty=True)
    return score(cfg, out_dir, pred_dir, files, references, prepared.labels, internal_convention(prepared.labels),
                 source=source, model_sha=sha256_file(checkpoint), extras=extras, start=start)


def predict_cases(predictor: CasePredictor, references: Mapping[str, SourceReference], pred_dir: Path, *,
                  skip_bad: bool) -> dict[str, dict[str, Any]]:
    """Write ``<case>.nii.gz`` (internal codes, native grid) for every reference case.

    Returns:
        Per predicted case: ``seconds`` and ``max_foreground_prob``.

    Raises:
        MedsegError: a case that cannot be read, unless ``skip_bad`` (it is then left without a
            prediction, and scoring lists it).
    """
    pred_dir.mkdir(parents=True, exist_ok=True)
    extras: dict[str, dict[str, Any]] = {}
    for name, reference in references.items():
        try:
            case = reference.source.load(reference.ref)
        except MedsegError as e:
            if not skip_bad:
                raise
            log.warning("evaluate %s: cannot be read (%s)", name, e)
            continue
        pred = predictor(case.image, case.affine, name=name)
        with atomic_path(pred_dir / f"{name}.nii.gz") as tmp:
            write_nifti(tmp, pred.label, case.affine)
        extras[name] = {"seconds": pred.seconds, "max_foreground_prob": pred.max_foreground_prob}
    return extras


def evaluate_folders(cfg: Any, predictions: Path, references: Path, out_dir: Path,
                     images: Path | None = None) -> dict[str, Any]:
    """Score a folder of predicted label maps against a folder of references, both in the
    ``evaluate.labels`` coding; ``images`` (optional) feeds the montages."""
    start = time.monotonic()
    convention = choice(cfg.evaluate.labels)
    files = list_cases(predictions, "predictions")
    refs = folder_references(references, convention, images)
    return score(cfg, out_dir, predictions, files, refs, label_spec(convention), convention,
                 source={"predictions": str(predictions), "references": str(references)}, model_sha=None,
                 extras=None, start=start)


def score(cfg: Any, out_dir: Path, predictions: Path, files: Mapping[str, Path], references: Mapping[str, Reference],
          labels: LabelSpec, convention: str, *, source: dict[str, Any], model_sha: str | None,
          extras: Mapping[str, Mapping[str, Any]] | None, start: float) -> dict[str, Any]:
    """Score the prediction ``files`` of the folder ``predictions`` (``convention`` coding) against
    ``references``, write the outputs and return the stage summary."""
    ev = cfg.evaluate
    scoring = Scoring(ev, labels)
    unmatched = score_predictions(scoring, predictions, files, references, convention=convention,
                                  skip_bad=bool(ev.skip_bad), extras=extras)
    if "references" in source:
        source = {**source, "unmatched_predictions": ", ".join(unmatched) or "none"}
    config = plain(cfg)
    evaluation = scoring.evaluation(source=source, model_sha=model_sha, seconds=time.monotonic() - start,
                                    config=config)
    write_evaluation(out_dir, evaluation, config_yaml=OmegaConf.to_yaml(config),
                     montage=montage_loader(references, files, convention, labels.regions),
                     n_figures=int(ev.n_figures))
    log_summary(evaluation)
    return evaluation.stage_summary(out_dir)


def internal_convention(labels: LabelSpec) -> str:
    """The label coding that is the identity on ``labels``' internal codes (how ``evaluate`` writes
    its predictions): ``binary`` for lesion masks, ``msd`` for the BraTS label set."""
    return "binary" if set(labels.labels) == {0, 1} else "msd"
