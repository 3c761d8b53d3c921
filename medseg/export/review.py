"""Fitting what a reviewer relies on, on the validation split: the temperature
(:mod:`medseg.inference.calibration`), the QC thresholds (:mod:`medseg.inference.qc`) and the
small-enhancing rule's threshold (:mod:`medseg.inference.postprocess`).

``export`` records the result in the artifact's ``metadata.json`` (``calibration``, ``qc`` and
``postprocessing``); ``evaluate`` fits the same on the same cases (the computation is
deterministic) to report the calibration and the QC ranking on the test cases, and to score them
with the rule the artifact will apply, before anything is exported.

Two passes over the validation cases: the temperature is fitted on the cached preprocessed arrays
(model grid, uncalibrated probabilities, voxels in the tumour band); the QC signals are then
computed exactly as ``predict`` computes them (raw case, calibrated predictor, input grid), so the
thresholds compare like with like. The enhancing rule is fitted on the labels of that second pass
(the rule off while it runs): on what ``predict`` writes. Without calibration a pass of its own
predicts the validation cases for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import CalibrationConfig, InferenceConfig
from medseg.data.prepared import PreparedDataset
from medseg.data.sources.base import Case
from medseg.data.preprocess import Geometry
from medseg.errors import DataError
from medseg.inference.build import build_predictor
from medseg.inference.calibration import CalibrationSamples
from medseg.inference.postprocess import EnhancingSample, enhancing_sample, fit_enhancing_threshold
from medseg.inference.predictor import CasePrediction, CasePredictor
from medseg.inference.qc import case_qc, fit_thresholds, qc_fingerprint
from medseg.inference.uncertainty import voxel_ml

log = logging.getLogger(__name__)

DEFINITION = ("temperature scaling of the final (window-stitched, flip- and ensemble-averaged) probabilities: "
              "softmax(log p / T) for label-wise models, sigmoid(logit(p_r) / T_r) per region for region-wise "
              "models; labels are unchanged")


def validation_entries(prepared: PreparedDataset) -> list[dict[str, Any]]:
    """The labelled validation entries.

    Raises:
        DataError: the validation split is empty (names the key that turns fitting off).
    """
    entries = [e for e in prepared.datalist.get("validation", []) if e.get("label")]
    if not entries:
        raise DataError(prepared.folder / "datalist.json",
                        "calibration and QC thresholds are fitted on the validation split, which has no labelled "
                        "case; raise data.val_fraction and run prepare again, or set calibration.enabled=false")
    return entries


def fit_calibration(predictor: CasePredictor, entries: Sequence[dict[str, Any]], cfg: CalibrationConfig
                    ) -> dict[str, Any]:
    """Fit the temperature on the cached validation arrays (``predictor`` uncalibrated)."""
    target = predictor.target
    samples = CalibrationSamples(target.activation, target.labels.regions, float(cfg.band_mm),
                                 max(1, int(cfg.max_voxels) // len(entries)))
    for e in entries:
        probs = predictor.probabilities(torch.from_numpy(np.load(e["image"])))
        label = np.load(e["label"])
        if label.shape != tuple(probs.shape[1:]):
            raise DataError(e["label"], f"cached label {label.shape} does not match its image "
                                        f"{tuple(probs.shape[1:])}; run prepare again")
        samples.add(probs, label, Geometry.from_json(e["geometry"]).spacing, target.decode(probs))
    fit = samples.fit()
    names = list(target.labels.regions) if target.mode == "regions" else None
    return {"method": DEFINITION, "temperature": fit["temperature"] or [1.0] * target.channels,
            "scope": "per region" if names else "shared by all classes", "regions": names,
            "band_mm": float(cfg.band_mm), "n_cases": len(entries), "n_voxels": fit["n_voxels"],
            "nll_before": fit["nll_before"], "nll_after": fit["nll_after"],
            "inference": {"overlap": predictor.overlap, "tta_flips": [list(f) for f in predictor.flips]}}


def predicted_validation(predictor: CasePredictor, prepared: PreparedDataset, entries: Sequence[dict[str, Any]]
                         ) -> Iterator[tuple[str, Case, CasePrediction]]:
    """Each validation case read from its source and predicted as ``predict`` does."""
    for name, (source, ref) in prepared.refs([e["name"] for e in entries]).items():
        case = source.load(ref)
        yield name, case, predictor(case.image, case.affine, name=name)


def fit_qc(predictor: CasePredictor, prepared: PreparedDataset, entries: Sequence[dict[str, Any]],
           cfg: CalibrationConfig, enhancing: list[EnhancingSample] | None = None) -> dict[str, Any]:
    """QC thresholds from the raw validation cases predicted as ``predict`` does (``predictor``
    calibrated, with uncertainty); ``enhancing`` collects each case's sample for the enhancing rule."""
    if prepared.fingerprint is None:
        raise DataError(prepared.folder / "fingerprint.json", "not found; QC needs the training fingerprint "
                                                              "(run prepare again, or calibration.enabled=false)")
    fingerprint = qc_fingerprint(prepared.fingerprint)
    first = list(prepared.labels.regions.values())[0]
    signals, ref_ml = [], []
    for name, case, pred in predicted_validation(predictor, prepared, entries):
        if enhancing is not None and case.label is not None:
            enhancing.append(enhancing_sample(name, pred.label, case.label, predictor.enhancing_rule,
                                              voxel_ml(case.affine)))
        record = case_qc(case.image, case.affine, pred.label, pred.uncertainty, {"fingerprint": fingerprint},
                         prepared.channels)
        signals.append({"case": name, **record["signals"]})
        if case.label is not None:
            ref_ml.append(float(np.isin(case.label, list(first)).sum()) * voxel_ml(case.affine))
    values = [{k: v for k, v in s.items() if k != "case"} for s in signals]
    thresholds = fit_thresholds(values, fingerprint, float(cfg.qc_quantile), ref_ml, cfg.qc_false_flag_rate)
    return {"fingerprint": fingerprint, "thresholds": thresholds, "quantile": float(cfg.qc_quantile),
            "n_cases": len(signals), "validation_signals": signals, "reference_tumour_ml": ref_ml}


def fit_review(predictor: CasePredictor, prepared: PreparedDataset, cfg: CalibrationConfig,
               fit_rule: bool = False) -> dict[str, Any]:
    """Fit the temperature, then the QC thresholds (and, with ``fit_rule``, the enhancing rule's
    threshold), on the validation split; ``predictor`` is left calibrated, computing uncertainty and
    applying the fitted rule (ready to predict other cases as ``predict`` would).

    Returns:
        ``{"calibration": ..., "qc": ...}`` as recorded in the artifact's metadata, and
        ``"enhancing"`` (:func:`medseg.inference.postprocess.fit_enhancing_threshold`) with ``fit_rule``
        for a label set that has the rule.

    Raises:
        DataError: no labelled validation case, no fingerprint, or an unreadable validation case.
    """
    entries = validation_entries(prepared)
    samples: list[EnhancingSample] | None = [] if fit_rule and predictor.enhancing_rule is not None else None
    if samples is not None:
        predictor.min_enhancing_ml = 0.0
    predictor.temperature, predictor.uncertainty = None, True
    calibration = fit_calibration(predictor, entries, cfg)
    predictor.temperature = calibration["temperature"]
    log.info("calibration: temperature %s fitted on %d validation cases (%d voxels in the %g mm tumour band)",
             ", ".join(f"{t:.3f}" for t in calibration["temperature"]), len(entries), calibration["n_voxels"],
             calibration["band_mm"])
    qc = fit_qc(predictor, prepared, entries, cfg, samples)
    log.info("QC thresholds from %d validation cases: %s", qc["n_cases"],
             ", ".join(f"{k} {v:.3g}" for k, v in qc["thresholds"].items()))
    fitted = {"calibration": calibration, "qc": qc}
    if samples is not None:
        fitted["enhancing"] = adopt_enhancing(predictor, fit_enhancing_threshold(samples))
    return fitted


def fit_enhancing(predictor: CasePredictor, prepared: PreparedDataset) -> dict[str, Any] | None:
    """Fit the enhancing rule's threshold alone (without calibration) on the validation cases
    predicted as ``predict`` does, and leave ``predictor`` applying it.

    Returns:
        The fit (:func:`medseg.inference.postprocess.fit_enhancing_threshold`); ``None`` for a label
        set without the rule or without a labelled validation case (a warning says so; the rule
        stays off).
    """
    if predictor.enhancing_rule is None:
        return None
    entries = [e for e in prepared.datalist.get("validation", []) if e.get("label")]
    if not entries:
        log.warning("no labelled validation case: the small-enhancing rule stays off (set "
                    "evaluate.inference.min_enhancing_ml to choose a threshold, or 0 to silence this)")
        return None
    predictor.min_enhancing_ml = 0.0
    samples = [enhancing_sample(name, pred.label, case.label, predictor.enhancing_rule, voxel_ml(case.affine))
               for name, case, pred in predicted_validation(predictor, prepared, entries) if case.label is not None]
    return adopt_enhancing(predictor, fit_enhancing_threshold(samples))


def adopt_enhancing(predictor: CasePredictor, fit: dict[str, Any]) -> dict[str, Any]:
    """Make ``predictor`` apply the fitted threshold; log the fit."""
    predictor.min_enhancing_ml = float(fit["min_enhancing_ml"])
    log.info("small-enhancing rule: threshold %g ml fitted on %d validation cases (enhancing tumour Dice %.4f -> "
             "%.4f; relabelled: %s)", fit["min_enhancing_ml"], fit["n_cases"], fit["mean_dice_before"],
             fit["mean_dice_after"], ", ".join(fit["cases_relabelled"]) or "none")
    return fit


def review_metadata(calibration: CalibrationConfig | None, inference: InferenceConfig, checkpoint: Path,
                    prepared: PreparedDataset | None, has_rule: bool = True) -> dict[str, Any]:
    """What ``export`` records under ``calibration`` and ``qc`` (:func:`fit_review` of the
    checkpoint run with ``inference``) and, with ``inference.min_enhancing_ml`` unset, the enhancing
    rule's fit under ``enhancing`` (with the review, or :func:`fit_enhancing` alone with
    ``calibration.enabled=false``). Without a prepared dataset nothing (a warning says so: the
    artifact then predicts uncalibrated probabilities, its QC records carry signals without a review
    threshold, and the enhancing rule is off). ``has_rule``: the checkpoint's label set has the
    small-enhancing rule (lesion masks and GTV have none: nothing is fitted or warned about for it)."""
    enabled = calibration is not None and calibration.enabled
    fit_rule = inference.min_enhancing_ml is None and has_rule  # has_rule: the label set has an enhancing rule
    if not enabled and not fit_rule:
        return {}
    if prepared is None:
        log.warning("export: no paths.prepared, so no validation cases: the artifact gets no temperature, no QC "
                    "thresholds and no small-enhancing threshold (give paths.prepared, or set "
                    "calibration.enabled=false and evaluate.inference.min_enhancing_ml to silence this)")
        return {}
    predictor = build_predictor(inference, checkpoint=checkpoint)
    if enabled:
        return fit_review(predictor, prepared, calibration, fit_rule=fit_rule)
    fit = fit_enhancing(predictor, prepared)
    return {"enhancing": fit} if fit is not None else {}
