"""Fitting what a reviewer relies on, on the validation split: the temperature
(:mod:`medseg.inference.calibration`) and the QC thresholds (:mod:`medseg.inference.qc`).

``export`` records the result in the artifact's ``metadata.json`` (``calibration`` and ``qc``);
``evaluate`` fits the same on the same cases (the computation is deterministic) to report the
calibration and the QC ranking on the test cases before anything is exported.

Two passes over the validation cases: the temperature is fitted on the cached preprocessed arrays
(model grid, uncalibrated probabilities, voxels in the tumour band); the QC signals are then
computed exactly as ``predict`` computes them (raw case, calibrated predictor, input grid), so the
thresholds compare like with like.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import CalibrationConfig, InferenceConfig
from medseg.data.prepared import PreparedDataset
from medseg.data.preprocess import Geometry
from medseg.errors import DataError
from medseg.inference.build import build_predictor
from medseg.inference.calibration import CalibrationSamples
from medseg.inference.predictor import CasePredictor
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


def fit_qc(predictor: CasePredictor, prepared: PreparedDataset, entries: Sequence[dict[str, Any]],
           cfg: CalibrationConfig) -> dict[str, Any]:
    """QC thresholds from the raw validation cases predicted as ``predict`` does (``predictor``
    calibrated, with uncertainty)."""
    if prepared.fingerprint is None:
        raise DataError(prepared.folder / "fingerprint.json", "not found; QC needs the training fingerprint "
                                                              "(run prepare again, or calibration.enabled=false)")
    fingerprint = qc_fingerprint(prepared.fingerprint)
    first = list(prepared.labels.regions.values())[0]
    signals, ref_ml = [], []
    for name, (source, ref) in prepared.refs([e["name"] for e in entries]).items():
        case = source.load(ref)
        pred = predictor(case.image, case.affine, name=name)
        record = case_qc(case.image, case.affine, pred.label, pred.uncertainty, {"fingerprint": fingerprint},
                         prepared.channels)
        signals.append({"case": name, **record["signals"]})
        if case.label is not None:
            ref_ml.append(float(np.isin(case.label, list(first)).sum()) * voxel_ml(case.affine))
    values = [{k: v for k, v in s.items() if k != "case"} for s in signals]
    thresholds = fit_thresholds(values, fingerprint, float(cfg.qc_quantile), ref_ml, cfg.qc_false_flag_rate)
    return {"fingerprint": fingerprint, "thresholds": thresholds, "quantile": float(cfg.qc_quantile),
            "n_cases": len(signals), "validation_signals": signals, "reference_tumour_ml": ref_ml}


def fit_review(predictor: CasePredictor, prepared: PreparedDataset, cfg: CalibrationConfig) -> dict[str, Any]:
    """Fit the temperature, then the QC thresholds, on the validation split; ``predictor`` is left
    calibrated and computing uncertainty (ready to predict other cases as ``predict`` would).

    Returns:
        ``{"calibration": ..., "qc": ...}`` as recorded in the artifact's metadata.

    Raises:
        DataError: no labelled validation case, no fingerprint, or an unreadable validation case.
    """
    entries = validation_entries(prepared)
    predictor.temperature, predictor.uncertainty = None, True
    calibration = fit_calibration(predictor, entries, cfg)
    predictor.temperature = calibration["temperature"]
    log.info("calibration: temperature %s fitted on %d validation cases (%d voxels in the %g mm tumour band)",
             ", ".join(f"{t:.3f}" for t in calibration["temperature"]), len(entries), calibration["n_voxels"],
             calibration["band_mm"])
    qc = fit_qc(predictor, prepared, entries, cfg)
    log.info("QC thresholds from %d validation cases: %s", qc["n_cases"],
             ", ".join(f"{k} {v:.3g}" for k, v in qc["thresholds"].items()))
    return {"calibration": calibration, "qc": qc}


def review_metadata(calibration: CalibrationConfig | None, inference: InferenceConfig, checkpoint: Path,
                    prepared: PreparedDataset | None) -> dict[str, Any]:
    """What ``export`` records under ``calibration`` and ``qc`` (:func:`fit_review` of the
    checkpoint run with ``inference``); nothing with ``calibration.enabled=false`` or without a
    prepared dataset (a warning says so: the artifact then predicts uncalibrated probabilities and
    its QC records carry signals without a review threshold)."""
    if calibration is None or not calibration.enabled:
        return {}
    if prepared is None:
        log.warning("export: no paths.prepared, so no validation cases: the artifact gets no temperature and no "
                    "QC thresholds (give paths.prepared, or set calibration.enabled=false to silence this)")
        return {}
    return fit_review(build_predictor(inference, checkpoint=checkpoint), prepared, calibration)
