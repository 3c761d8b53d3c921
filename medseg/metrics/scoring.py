"""Scoring a folder of predicted label maps against references: the one path ``evaluate`` takes.

``evaluate`` with a checkpoint first writes its predictions into ``predictions/``, then scores
that folder exactly as it scores another tool's folder (``evaluate.predictions=DIR``); only the
references differ (:mod:`medseg.metrics.references`: label files, or the cases of a dataset
source). Every case is scored on the native grid of its reference.

:class:`Scoring` accumulates per-case metrics (:func:`medseg.metrics.case.case_metrics`),
detections (:mod:`medseg.metrics.detection`) and a content fingerprint of the references;
:meth:`Scoring.evaluation` summarises them (:func:`medseg.metrics.aggregate.aggregate`) into the
contents of ``metrics.json``, ``detections.json`` and ``metrics.csv``.

Bad input: strict by default (one error naming the case and file). With ``skip_bad`` a missing or
unreadable prediction is scored as an empty prediction and a case with an unreadable reference is
left unscored; both are listed as failures rather than dropped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import EvaluateConfig, choice
from medseg.data.labels import LabelSpec
from medseg.errors import DataError, MedsegError, case_error
from medseg.metrics.aggregate import aggregate
from medseg.metrics.case import case_metrics
from medseg.metrics.detection import detect, detection_summary
from medseg.metrics.external import read_prediction
from medseg.metrics.overlap import EmptyConvention
from medseg.metrics.references import Reference
from medseg.report.provenance import provenance
from medseg.report.render import fmt

log = logging.getLogger(__name__)

HD_DEFINITION = ("HD95 = max of the two directed 95th percentiles of surface distances in mm "
                 "(BraTS / MONAI definition), voxel spacing honoured")


LESION_CONVENTIONS = {
    "brats2023": "BraTS 2023: 26-connected lesions, reference dilated 3 voxels, lesions under 0.05 ml ignored, "
                 "missed / false-positive lesions Dice 0 and HD95 374 mm",
    "brats2025": "BraTS 2025 (brats-evaluation / panoptica): 26-connected lesions, no dilation or size "
                 "threshold, one-to-one matching maximising Dice (any overlap), lesion-wise Dice / HD95 / NSD "
                 "= mean over matched lesions (none matched: Dice 0, HD95 the one-empty HD; no lesions: "
                 "undefined), F1 = TP / (TP + (FP + FN) / 2)",
}


def conventions(empty: EmptyConvention, nsd_mm: float, lesion_convention: str = "brats2023") -> dict[str, str]:
    """The conventions recorded in ``metrics.json``."""
    return {"empty": empty.describe(), "hd": HD_DEFINITION, "lesion_convention": lesion_convention,
            "msd": "mean of both directions' surface distances pooled (MedPy assd), mm",
            "nsd": f"normalised surface Dice at {nsd_mm:g} mm",
            "rates": "sensitivity/precision undefined (null, skipped in aggregates) when the "
                     "reference/prediction is empty",
            "lesion_wise": LESION_CONVENTIONS[lesion_convention],
            "aggregate": "mean, median, std, IQR and bootstrap 95% CI of the mean (2000 resamples); "
                         "undefined values skipped (n counts the values used)",
            "failures": "a missing or unreadable prediction (evaluate.skip_bad=true) is scored as an "
                        "empty prediction and listed under failed",
            "grid": "native grid of each reference image"}


@dataclass
class Evaluation:
    """A finished scoring: what ``evaluate`` writes.

    Attributes:
        metrics: the contents of ``metrics.json``.
        detection: the contents of ``detections.json``.
        records: every case (scored, failed or unscored) with its metrics.
        labels: labels and regions scored.
        report_conventions: the conventions listed at the top of the report.
        nsd_mm: tolerance of the normalised surface Dice.
    """

    metrics: dict[str, Any]
    detection: dict[str, Any]
    records: list[dict[str, Any]]
    labels: LabelSpec
    report_conventions: list[str]
    nsd_mm: float

    @property
    def summary(self) -> dict[str, Any]:
        """Per structure and metric: mean, median, spread and CI."""
        return self.metrics["summary"]

    def csv_rows(self) -> list[dict[str, Any]]:
        """``metrics.csv``: one row per scored case and structure."""
        return [{"case": r["case"], "status": r["status"], "structure": s, **vals,
                 "max_foreground_prob": r["max_foreground_prob"], "seconds": r["seconds"]}
                for r in self.records if r["metrics"] is not None for s, vals in r["metrics"].items()]

    def stage_summary(self, out_dir: Path) -> dict[str, Any]:
        """The summary ``evaluate`` returns (mean Dice and HD95 per region, file paths)."""
        regions = self.labels.regions
        return {"n_cases": self.metrics["n_cases"], "n_failed": len(self.metrics["failed"]),
                "dice": {r: self.summary[r]["dice"]["mean"] for r in regions},
                "hd95_mm": {r: self.summary[r]["hd95"]["mean"] for r in regions},
                "metrics": str(out_dir / "metrics.json"), "report": str(out_dir / "report.html")}


class Scoring:
    """Accumulates per-case metrics, detections and a content fingerprint of the references.

    Args:
        evaluate: the ``evaluate`` settings (HD percentile, NSD tolerance, empty-mask convention,
            detection threshold).
        labels: labels and regions to score.
    """

    def __init__(self, evaluate: EvaluateConfig, labels: LabelSpec) -> None:
        self.labels = labels
        self.empty = EmptyConvention.named(choice(evaluate.empty_convention), float(evaluate.empty_hd_mm))
        self.percentile = float(evaluate.hd_percentile)
        self.nsd_mm = float(evaluate.nsd_tolerance_mm)
        self.min_ml = float(evaluate.detection_min_ml)
        self.lesion_convention = choice(evaluate.lesion_convention)
        self.records: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []
        self._fingerprint = hashlib.sha256()

    def add(self, name: str, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, *,
            seconds: float | None = None, max_prob: float | None = None, status: str = "ok",
            reason: str | None = None, scored_as: str | None = None) -> dict[str, Any]:
        """Score one case (internal label maps on one grid) and record it."""
        spacing = [float(x) for x in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
        m = case_metrics(pred, ref, spacing, self.labels, self.percentile, self.empty, self.nsd_mm,
                         lesion_convention=self.lesion_convention)
        self._fingerprint.update(f"{name}:{ref.shape}:{np.round(affine, 4).tolist()}".encode())
        self._fingerprint.update(np.ascontiguousarray(ref, dtype=np.uint8).tobytes())
        found = detect(pred, affine, self.labels.regions, self.min_ml)
        truth = detect(ref, affine, self.labels.regions, self.min_ml)
        self.detections.append({"case": name, **found, "max_foreground_prob": max_prob,
                                "reference_tumour_present": truth["tumour_present"],
                                "reference_n_lesions": truth["n_lesions"]})
        record = {"case": name, "status": status, "reason": reason, "scored_as": scored_as, "seconds": seconds,
                  "max_foreground_prob": max_prob, "metrics": m}
        self.records.append(record)
        log.info("evaluate %s: %s%s", name, ", ".join(f"{r} Dice {fmt(m[r]['dice'])}" for r in self.labels.regions),
                 f" ({status}: {reason})" if status != "ok" else "")
        return record

    def add_unscored(self, name: str, reason: str) -> None:
        """Record a case that could not be scored (its reference is unreadable)."""
        self.records.append({"case": name, "status": "failed", "reason": reason, "scored_as": "not scored",
                             "seconds": None, "max_foreground_prob": None, "metrics": None})
        log.warning("evaluate %s: not scored (%s)", name, reason)

    @property
    def fingerprint(self) -> str:
        """sha256 over the case names, grids and reference voxels that were scored."""
        return self._fingerprint.hexdigest()

    def evaluation(self, *, source: Mapping[str, Any], model_sha: str | None, seconds: float,
                   config: Any) -> Evaluation:
        """Summarise the scored cases.

        Args:
            source: what was scored (checkpoint and prepared folder, or the two folders); recorded
                in the provenance.
            model_sha: sha256 of the checkpoint (``None`` for external predictions).
            seconds: wall time of the evaluation so far.
            config: the resolved configuration (JSON-ready).

        Raises:
            DataError: no case could be scored.
        """
        scored = [r for r in self.records if r["metrics"] is not None]
        if not scored:
            raise DataError(source.get("references") or source.get("prepared") or "evaluate",
                            "no case could be scored (see the failures above)")
        summary = aggregate([r["metrics"] for r in scored])
        failed = [{"case": r["case"], "reason": r["reason"], "scored_as": r["scored_as"]}
                  for r in self.records if r["status"] != "ok"]
        conv = conventions(self.empty, self.nsd_mm, self.lesion_convention)
        prov = {**provenance(), "data_fingerprint": self.fingerprint, "model_sha256": model_sha or "n/a (external)",
                **source, "seconds": round(seconds, 2)}
        metrics = {"convention": conv, "regions": {k: list(v) for k, v in self.labels.regions.items()},
                   "summary": summary, "cases": [{"case": r["case"], "status": r["status"], **r["metrics"]}
                                                 for r in scored],
                   "failed": failed, "n_cases": len(self.records), "data_fingerprint": self.fingerprint,
                   "model_sha256": model_sha, "provenance": prov, "config": config}
        if "checkpoint" in source:
            metrics["checkpoint"] = source["checkpoint"]
        metrics["missing_channels"] = source.get("missing_channels") or "none"  # evaluate.drop_channels
        detection = detection_summary(self.detections, [r["metrics"] for r in scored], self.labels.regions,
                                      self.min_ml)
        report_conv = [f"Empty masks — {self.empty.describe()}", HD_DEFINITION,
                       f"Lesion-wise scores: evaluate.lesion_convention={self.lesion_convention}",
                       f"Surface Dice tolerance {self.nsd_mm:g} mm; volumes in ml from the voxel spacing",
                       conv["lesion_wise"], conv["aggregate"], conv["failures"]]
        return Evaluation(metrics, detection, self.records, self.labels, report_conv, self.nsd_mm)


def score_predictions(scoring: Scoring, predictions: Path, files: Mapping[str, Path],
                      references: Mapping[str, Reference], *, convention: str, skip_bad: bool,
                      extras: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Score the prediction files of a folder against references matched by case name.

    Args:
        scoring: the accumulator.
        predictions: the prediction folder (named in errors).
        files: its files by case name (:func:`medseg.metrics.external.list_cases`).
        references: the references by case name, in scoring order.
        convention: label coding of the prediction files.
        skip_bad: score missing or unreadable predictions as empty and list them, instead of
            stopping at the first.
        extras: per case, ``seconds`` and ``max_foreground_prob`` of the prediction, when known.

    Returns:
        The predictions that have no reference (not scored).

    Raises:
        DataError: without ``skip_bad``: missing predictions (all named), or the first bad file.
    """
    missing = [n for n in references if n not in files]
    if missing and not skip_bad:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(predictions, f"no prediction for {len(missing)} reference case(s): {shown} "
                                     "(evaluate.skip_bad=true scores them as empty predictions and lists them)")
    unmatched = [n for n in files if n not in references]
    if unmatched:
        log.warning("%d prediction(s) have no reference and are not scored: %s", len(unmatched),
                    ", ".join(unmatched[:10]))
    for name, reference in references.items():
        extra = (extras or {}).get(name, {})
        try:
            if name not in files:
                raise DataError(predictions, f"case {name}: no prediction file")
            ref, affine = reference.label()
            pred = read_prediction(name, files[name], convention, ref, affine)
            scoring.add(name, pred, ref, affine, seconds=extra.get("seconds"),
                        max_prob=extra.get("max_foreground_prob"))
        except (MedsegError, MemoryError) as e:  # memory exhaustion: this case's one-line error
            e = case_error(files.get(name, predictions), e)
            if not skip_bad:
                raise e from None
            _score_as_empty(scoring, reference, str(e))
    return unmatched


def _score_as_empty(scoring: Scoring, reference: Reference, reason: str) -> None:
    """Score a case whose prediction failed as an empty prediction (unscored if its reference
    cannot be read either)."""
    try:
        ref, affine = reference.label()
    except MedsegError as ref_error:
        scoring.add_unscored(reference.name, str(ref_error))
        return
    scoring.add(reference.name, np.zeros_like(ref), ref, affine, status="failed", reason=reason,
                scored_as="empty prediction")


def log_summary(evaluation: Evaluation) -> None:
    """Log the mean Dice and HD95 per region, and the failures."""
    summary = evaluation.summary
    for region in evaluation.labels.regions:
        log.info("test %-16s Dice %s (median %s), HD95 %s mm", region, fmt(summary[region]["dice"]["mean"], 4),
                 fmt(summary[region]["dice"]["median"], 4), fmt(summary[region]["hd95"]["mean"], 2))
    failed = evaluation.metrics["failed"]
    if failed:
        log.warning("%d case(s) failed and are listed in the report: %s", len(failed),
                    ", ".join(f["case"] for f in failed))
