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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from medseg.config import CalibrationConfig, choice
from medseg.data.contrasts import zero_channels
from medseg.data.io.nifti import write_nifti
from medseg.data.labels import LabelSpec, internal_convention, label_spec
from medseg.data.prepared import PreparedDataset
from medseg.errors import ConfigError, MedsegError, case_error
from medseg.data.preprocess import Geometry
from medseg.export.review import fit_enhancing, fit_review
from medseg.inference.build import build_predictor
from medseg.inference.calibration import band_samples
from medseg.inference.predictor import CasePrediction, CasePredictor
from medseg.inference.qc import case_qc
from medseg.metrics.calibration import ReliabilityBins
from medseg.metrics.external import list_cases
from medseg.metrics.references import Reference, SourceReference, folder_references, source_references
from medseg.metrics.review import qc_ranking
from medseg.metrics.scoring import Scoring, log_summary, score_predictions
from medseg.report.evaluation import montage_loader, write_evaluation
from medseg.report.viewer import evaluation_viewer, scored_case_loader
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
    fit_rule = cfg.evaluate.inference.min_enhancing_ml is None  # fitted on validation, as export will
    check = TestReview(predictor, prepared, cfg.calibration, names, fit_rule) if cfg.calibration.enabled else None
    fit = (check.fitted.get("enhancing") if check is not None else
           fit_enhancing(predictor, prepared) if fit_rule else None)
    references = source_references(prepared.refs(names), prepared.channels)
    pred_dir = out_dir / "predictions"
    dropped = dropped_channels(cfg.evaluate.drop_channels, prepared.channels)
    extras = predict_cases(predictor, references, pred_dir, skip_bad=bool(cfg.evaluate.skip_bad),
                           drop=(prepared.channels, dropped), check=check)
    source = {"checkpoint": str(checkpoint), "prepared": str(prepared.folder),
              **({"missing_channels": "+".join(dropped)} if dropped else {})}
    files = list_cases(pred_dir, "predictions", allow_empty=True)
    post = {"min_component_ml": predictor.min_component_ml, "min_enhancing_ml": predictor.min_enhancing_ml,
            "enhancing_fit": fit, "cases_relabelled": {n: e["enhancing_relabelled_ml"] for n, e in extras.items()
                                                       if e.get("enhancing_relabelled_ml") is not None}}
    return score(cfg, out_dir, pred_dir, files, references, prepared.labels, internal_convention(prepared.labels),
                 source=source, model_sha=sha256_file(checkpoint), extras=extras, start=start, review=check,
                 postprocessing=post)


def predict_cases(predictor: CasePredictor, references: Mapping[str, SourceReference], pred_dir: Path, *,
                  skip_bad: bool, drop: tuple[Sequence[str], Sequence[str]] = ((), ()),
                  check: TestReview | None = None) -> dict[str, dict[str, Any]]:
    """Write ``<case>.nii.gz`` (internal codes, native grid) for every reference case; ``drop``:
    ``(channels, dropped)``, the dropped channels are zeroed first (a missing-contrast pattern);
    ``check`` measures calibration and QC on each predicted case.

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
            image = zero_channels(case.image, *drop)
            pred = predictor(image, case.affine, name=name, details=check is not None)
        except (MedsegError, MemoryError) as e:  # memory exhaustion: this case's one-line error
            e = case_error(reference.ref.images[0] if reference.ref.images else name, e)
            if not skip_bad:
                raise e from None
            log.warning("evaluate %s: cannot be read (%s)", name, e)
            continue
        with atomic_path(pred_dir / f"{name}.nii.gz") as tmp:
            write_nifti(tmp, pred.label, case.affine)
        extras[name] = {"seconds": pred.seconds, "max_foreground_prob": pred.max_foreground_prob,
                        "enhancing_relabelled_ml": pred.enhancing_relabelled_ml}
        if check is not None:
            check.add(name, image, case.affine, pred)
    return extras


def dropped_channels(drop: Sequence[str], channels: Sequence[str]) -> list[str]:
    """``evaluate.drop_channels`` checked against the dataset's channels (model order).

    Raises:
        ConfigError: an unknown channel, or every channel dropped.
    """
    unknown = [c for c in drop if c not in channels]
    if unknown:
        raise ConfigError(f"evaluate.drop_channels={list(drop)}: {unknown} are not channels of the prepared data; "
                          f"valid: {list(channels)}")
    dropped = [c for c in channels if c in set(drop)]
    if dropped and len(dropped) == len(channels):
        raise ConfigError(f"evaluate.drop_channels={list(drop)} drops every channel; keep at least one")
    if dropped:
        log.info("evaluate: channels %s zeroed after loading (missing-contrast pattern)", dropped)
    return dropped


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
          extras: Mapping[str, Mapping[str, Any]] | None, start: float,
          review: TestReview | None = None, postprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the prediction ``files`` of the folder ``predictions`` (``convention`` coding) against
    ``references``, write the outputs (with ``review``'s calibration and QC ranking under
    ``metrics.json`` ``review``, and the ``postprocessing`` the predictions had: thresholds, the
    enhancing rule's fit, the cases it relabelled) and return the stage summary."""
    ev = cfg.evaluate
    scoring = Scoring(ev, labels)
    unmatched = score_predictions(scoring, predictions, files, references, convention=convention,
                                  skip_bad=bool(ev.skip_bad), extras=extras)
    if "references" in source:
        source = {**source, "unmatched_predictions": ", ".join(unmatched) or "none"}
    config = plain(cfg)
    evaluation = scoring.evaluation(source=source, model_sha=model_sha, seconds=time.monotonic() - start,
                                    config=config)
    if review is not None:
        evaluation.metrics["review"] = review.summary(evaluation.records)
    if postprocessing is not None:
        evaluation.metrics["postprocessing"] = postprocessing
    viewer = evaluation_viewer(ev, scored_case_loader(references, files, convention), files, predictions,
                               review.qc if review is not None else None)
    write_evaluation(out_dir, evaluation, config_yaml=OmegaConf.to_yaml(config),
                     montage=montage_loader(references, files, convention, labels.regions),
                     n_figures=int(ev.n_figures), viewer=viewer)
    log_summary(evaluation)
    return evaluation.stage_summary(out_dir)


class TestReview:
    """Calibration and QC of the evaluated cases: fits the temperature and the QC thresholds on the
    validation split as ``export`` does (:func:`medseg.export.review.fit_review`, which leaves
    ``predictor`` calibrated), then accumulates, per predicted case, the reliability bins before and
    after scaling (tumour band, model grid, cached reference) and the case's QC record.
    """

    def __init__(self, predictor: CasePredictor, prepared: PreparedDataset, cfg: CalibrationConfig,
                 names: Sequence[str], fit_rule: bool = False) -> None:
        self.predictor, self.cfg = predictor, cfg
        self.fitted = fit_review(predictor, prepared, cfg, fit_rule=fit_rule)
        wanted = set(names)
        self.entries = {e["name"]: e for v in prepared.datalist.values() for e in v if e["name"] in wanted}
        self.channels = prepared.channels
        regions = list(prepared.labels.regions)
        self.bins = {r: {"before": ReliabilityBins(cfg.bins), "after": ReliabilityBins(cfg.bins)} for r in regions}
        self.qc: dict[str, dict[str, Any]] = {}

    def add(self, name: str, image: np.ndarray, affine: np.ndarray, pred: CasePrediction) -> None:
        """Measure one predicted case (``pred`` from ``details=True``)."""
        self.qc[name] = case_qc(image, affine, pred.label, pred.uncertainty, self.fitted["qc"], self.channels)
        entry = self.entries.get(name)
        if entry is None or not entry.get("label") or pred.model_probs is None:
            return
        label = np.load(entry["label"])
        if label.shape != tuple(pred.model_probs.shape[1:]):
            log.warning("evaluate %s: cached label %s does not match the model grid; calibration not measured",
                        name, label.shape)
            return
        p0, p1, y = band_samples(pred.model_probs, self.predictor.temperature, self.predictor.target, label,
                                 Geometry.from_json(entry["geometry"]).spacing, self.cfg.band_mm)
        for k, region in enumerate(self.bins):
            self.bins[region]["before"].add(p0[k], y[k])
            self.bins[region]["after"].add(p1[k], y[k])

    def summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``metrics.json`` ``review``: temperature, ECE and reliability curves before/after per
        region, the QC ranking (:func:`medseg.metrics.review.qc_ranking`) and every case's QC record."""
        calibration = dict(self.fitted["calibration"])
        calibration["test"] = {r: {k: b.to_json() for k, b in v.items()} for r, v in self.bins.items()}
        calibration["ece_definition"] = (f"binary ECE of each region's probability over {self.cfg.bins} equal-width "
                                         f"bins, voxels within {self.cfg.band_mm:g} mm of the reference or predicted "
                                         "tumour (model grid)")
        ranking = qc_ranking(records, self.qc, list(self.bins), float(self.cfg.review_dice))
        return {"calibration": calibration, "qc": {"thresholds": self.fitted["qc"]["thresholds"],
                                                   "ranking": ranking, "cases": self.qc}}
