"""``evaluate``: score segmentations on the native grid and write the report.

Two modes:

- **checkpoint** (default): predict the test split of ``paths.prepared`` with ``paths.checkpoint``
  (``best.pt`` of train) and score it; predictions are written to ``predictions/<case>.nii.gz``.
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

import csv
import hashlib
import logging
import time
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medseg.config import choice
from medseg.data.io.nifti import read_nifti, write_nifti
from medseg.data.labels import CONVENTIONS, LabelSpec, label_spec
from medseg.data.preprocess import PreprocessSpec
from medseg.data.sources import CaseRef, Source, make_source
from medseg.inference.predictor import CasePredictor, torch_network
from medseg.inference.targets import Target
from medseg.inference.predictor import pick_device
from medseg.engine.trainer import load_checkpoint
from medseg.errors import ConfigError, DataError, MedsegError
from medseg.metrics.case import case_metrics
from medseg.metrics.detection import case_level, detect, roc_auc
from medseg.metrics.overlap import EmptyConvention
from medseg.models.unet import build_model, load_weights
from medseg.metrics.external import image_for, load_pair, match_folders, read_label_map
from medseg.report.evaluation import MontageLoader, montage_rows, write_evaluation_report
from medseg.report.provenance import provenance
from medseg.report.render import fmt
from medseg.stages.common import plain, require_path
from medseg.stages.train import load_prepared
from medseg.utils.files import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)

HD_DEFINITION = ("HD95 = max of the two directed 95th percentiles of surface distances in mm "
                 "(BraTS / MONAI definition), voxel spacing honoured")


def model_from_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the U-Net described by a checkpoint and load its weights."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    model = build_model(meta["model"], int(meta["in_channels"]), int(meta["num_classes"]), inference=True)
    load_weights(model, ckpt["model"])
    return model.to(device).eval(), meta


def predictor_from_checkpoint(path: Path, inf_cfg: dict[str, Any]) -> tuple[CasePredictor, dict[str, Any]]:
    """A :class:`CasePredictor` running the checkpoint's model eagerly."""
    if inf_cfg.get("threads"):
        torch.set_num_threads(int(inf_cfg["threads"]))
    device = pick_device(str(inf_cfg.get("device", "auto")))
    model, meta = model_from_checkpoint(path, device)
    spec = PreprocessSpec.from_json(meta["plan"]["preprocessing"])
    pred = CasePredictor(torch_network(model, device, str(inf_cfg.get("precision", "fp32"))), spec,
                         meta["patch_size"], checkpoint_target(meta),
                         overlap=float(inf_cfg["overlap"]), batch_size=int(inf_cfg["sw_batch_size"]),
                         tta_axes=inf_cfg.get("tta_flips", []),
                         min_component_ml=float(inf_cfg.get("min_component_ml") or 0.0),
                         max_memory_gb=inf_cfg.get("max_memory_gb"), model_cfg=meta["model"],
                         stitch_dtype=str(inf_cfg.get("stitch_dtype", "float32")))
    return pred, meta


def checkpoint_target(meta: dict[str, Any]) -> Target:
    """The target a checkpoint was trained for (label-wise for checkpoints that do not say)."""
    return Target.from_json(meta.get("target") or meta["plan"]["labels"])


def detection_summary(detections: list[dict[str, Any]], per_case: list[dict[str, Any]], labels: LabelSpec,
                      min_ml: float) -> dict[str, Any]:
    """``detections.json``: per-case lesions with boxes, and case- and lesion-level detection rates."""
    truths = [d["reference_tumour_present"] for d in detections]
    first = next(iter(labels.regions))
    tp = sum(c[first].get("lesion_tp", 0) for c in per_case)
    fp = sum(c[first].get("lesion_fp", 0) for c in per_case)
    fn = sum(c[first].get("lesion_fn", 0) for c in per_case)
    return {
        "convention": {"tumour": f"region {first} {list(labels.regions[first])}",
                       "tumour_present": f"predicted tumour volume >= {min_ml:g} ml",
                       "bbox_mm": "RAS world mm of the extreme voxel centres [[R, A, S] min, [R, A, S] max]",
                       "lesions": "26-connected components of the predicted tumour, largest first"},
        "case_level": {**case_level([d["tumour_present"] for d in detections], truths),
                       "roc_auc_volume": roc_auc([d["tumour_volume_ml"] for d in detections], truths),
                       "roc_auc_max_probability": (roc_auc([d["max_foreground_prob"] for d in detections], truths)
                                                   if all(d["max_foreground_prob"] is not None for d in detections)
                                                   else None)},
        "lesion_level": {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else None,
                         "recall": tp / (tp + fn) if tp + fn else None},
        "cases": detections,
    }


def source_refs(plan: dict[str, Any], names: list[str]) -> dict[str, tuple[Source, CaseRef]]:
    """The source recorded in ``plan.json`` and the references of the named cases in it."""
    src = plan["source"]
    options = src.get("options", {"convention": src["convention"]})
    source = make_source(src["kind"], src["root"], **options)
    by_name = {r.name: r for r in source.cases()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(src["root"], f"cases {missing} of the prepared split are no longer in the dataset")
    return {n: (source, by_name[n]) for n in names}


def aggregate(per_case: list[dict[str, dict[str, float | None]]], n_boot: int = 2000, seed: int = 0
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean, median, std, IQR and a bootstrap 95% confidence interval of the mean, per metric and
    structure. Undefined values (``None``, e.g. sensitivity of an empty reference) are skipped and
    the count of values used is reported as ``n``."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for structure in per_case[0]:
        out[structure] = {}
        for metric in per_case[0][structure]:
            v = np.asarray([c[structure][metric] for c in per_case if c[structure][metric] is not None], dtype=float)
            if v.size == 0:
                out[structure][metric] = {"mean": None, "median": None, "std": None, "iqr": None, "ci95": None, "n": 0}
                continue
            q1, q3 = np.percentile(v, [25, 75])
            means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
            out[structure][metric] = {"mean": float(v.mean()), "median": float(np.median(v)),
                                      "std": float(v.std()), "iqr": float(q3 - q1),
                                      "ci95": [float(x) for x in np.percentile(means, [2.5, 97.5])],
                                      "n": int(v.size)}
    return out


class Scoring:
    """Accumulates per-case metrics, detections and a content fingerprint of the references."""

    def __init__(self, cfg: DictConfig, labels: LabelSpec) -> None:
        ev = cfg.evaluate
        self.labels = labels
        self.empty = EmptyConvention.named(choice(ev.empty_convention), float(ev.empty_hd_mm))
        self.percentile = float(ev.hd_percentile)
        self.nsd_mm = float(ev.nsd_tolerance_mm)
        self.min_ml = float(ev.detection_min_ml)
        self.records: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []
        self._fingerprint = hashlib.sha256()

    def add(self, name: str, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray, *,
            seconds: float | None = None, max_prob: float | None = None, status: str = "ok",
            reason: str | None = None, scored_as: str | None = None) -> dict[str, Any]:
        spacing = [float(x) for x in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)]
        m = case_metrics(pred, ref, spacing, self.labels, self.percentile, self.empty, self.nsd_mm)
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
        self.records.append({"case": name, "status": "failed", "reason": reason, "scored_as": "not scored",
                             "seconds": None, "max_foreground_prob": None, "metrics": None})
        log.warning("evaluate %s: not scored (%s)", name, reason)

    @property
    def fingerprint(self) -> str:
        """sha256 over the case names, grids and reference voxels that were scored."""
        return self._fingerprint.hexdigest()

    def finish(self, cfg: DictConfig, out_dir: Path, *, source: dict[str, Any],
               model_sha: str | None, montage: MontageLoader | None, seconds: float) -> dict[str, Any]:
        """Write metrics.json/csv, detections.json and the report; return the stage summary."""
        scored = [r for r in self.records if r["metrics"] is not None]
        if not scored:
            raise DataError(source.get("references") or source.get("prepared", out_dir),
                            "no case could be scored (see the failures above)")
        summary = aggregate([r["metrics"] for r in scored])
        failed = [{"case": r["case"], "reason": r["reason"], "scored_as": r["scored_as"]}
                  for r in self.records if r["status"] != "ok"]
        conventions = {"empty": self.empty.describe(), "hd": HD_DEFINITION,
                       "msd": "mean of both directions' surface distances pooled (MedPy assd), mm",
                       "nsd": f"normalised surface Dice at {self.nsd_mm:g} mm",
                       "rates": "sensitivity/precision undefined (null, skipped in aggregates) when the "
                                "reference/prediction is empty",
                       "lesion_wise": "BraTS 2023: 26-connected lesions, reference dilated 3 voxels, lesions "
                                      "under 0.05 ml ignored, missed / false-positive lesions Dice 0 and HD95 374 mm",
                       "aggregate": "mean, median, std, IQR and bootstrap 95% CI of the mean (2000 resamples); "
                                    "undefined values skipped (n counts the values used)",
                       "failures": "a missing or unreadable prediction (evaluate.skip_bad=true) is scored as an "
                                   "empty prediction and listed under failed",
                       "grid": "native grid of each reference image"}
        prov = {**provenance(), "data_fingerprint": self.fingerprint, "model_sha256": model_sha or "n/a (external)",
                **source, "seconds": round(seconds, 2)}
        config = OmegaConf.to_container(cfg, resolve=True)
        detection = detection_summary(self.detections, [r["metrics"] for r in scored], self.labels, self.min_ml)
        result = {"convention": conventions, "regions": {k: list(v) for k, v in self.labels.regions.items()},
                  "summary": summary, "cases": [{"case": r["case"], "status": r["status"], **r["metrics"]}
                                                for r in scored],
                  "failed": failed, "n_cases": len(self.records), "data_fingerprint": self.fingerprint,
                  "model_sha256": model_sha, "provenance": prov, "config": config}
        if "checkpoint" in source:
            result["checkpoint"] = source["checkpoint"]
        write_json(out_dir / "metrics.json", result)
        write_json(out_dir / "detections.json", detection)
        rows = [{"case": r["case"], "status": r["status"], "structure": s, **vals,
                 "max_foreground_prob": r["max_foreground_prob"], "seconds": r["seconds"]}
                for r in scored for s, vals in r["metrics"].items()]
        _write_csv(out_dir / "metrics.csv", rows)
        write_evaluation_report(
            out_dir, title="medseg evaluation report", summary=summary, records=self.records,
            regions=self.labels.regions, detection=detection,
            conventions=[f"Empty masks — {self.empty.describe()}", HD_DEFINITION,
                         f"Surface Dice tolerance {self.nsd_mm:g} mm; volumes in ml from the voxel spacing",
                         conventions["lesion_wise"], conventions["aggregate"], conventions["failures"]],
            provenance=prov, config_yaml=OmegaConf.to_yaml(cfg, resolve=True), montage=montage,
            n_figures=int(cfg.evaluate.n_figures), nsd_mm=self.nsd_mm)
        for region in self.labels.regions:
            log.info("test %-16s Dice %s (median %s), HD95 %s mm", region, fmt(summary[region]["dice"]["mean"], 4),
                     fmt(summary[region]["dice"]["median"], 4), fmt(summary[region]["hd95"]["mean"], 2))
        if failed:
            log.warning("%d case(s) failed and are listed in the report: %s", len(failed),
                        ", ".join(f["case"] for f in failed))
        return {"n_cases": len(self.records), "n_failed": len(failed),
                "dice": {r: summary[r]["dice"]["mean"] for r in self.labels.regions},
                "hd95_mm": {r: summary[r]["hd95"]["mean"] for r in self.labels.regions},
                "metrics": str(out_dir / "metrics.json"), "report": str(out_dir / "report.html")}


def evaluate_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the evaluate stage (see module docstring)."""
    if cfg.evaluate.predictions or cfg.evaluate.references:
        return evaluate_folders(cfg, out_dir)
    return evaluate_checkpoint(cfg, out_dir)


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Predict the prepared test split with the checkpoint and score it."""
    start = time.monotonic()
    checkpoint = require_path(cfg, "checkpoint", "evaluate")
    prepared = require_path(cfg, "prepared", "evaluate")
    datalist, plan = load_prepared(prepared)
    test = datalist["test"]
    if not test:
        raise DataError(prepared / "datalist.json", "the test split is empty: nothing to evaluate")
    predictor, meta = predictor_from_checkpoint(checkpoint, plain(cfg.evaluate.inference))
    labels = LabelSpec.from_json(meta["plan"]["labels"])
    scoring = Scoring(cfg, labels)
    refs = source_refs(plan, [e["name"] for e in test])
    skip_bad = bool(cfg.evaluate.skip_bad)
    for entry in test:
        source, ref = refs[entry["name"]]
        try:
            case = source.load(ref)
        except MedsegError as e:
            if not skip_bad:
                raise
            scoring.add_unscored(entry["name"], str(e))
            continue
        pred = predictor(case.image, case.affine, name=entry["name"])
        with atomic_path(out_dir / "predictions" / f"{entry['name']}.nii.gz") as tmp:
            write_nifti(tmp, pred.label, case.affine)
        scoring.add(entry["name"], pred.label, case.label, case.affine, seconds=pred.seconds,
                    max_prob=pred.max_foreground_prob)
    channels = list(meta["plan"]["preprocessing"]["channels"])

    def montage(name: str) -> tuple[list, np.ndarray]:
        source, ref = refs[name]
        case = source.load(ref)
        pred = read_nifti(out_dir / "predictions" / f"{name}.nii.gz", ndim=(3,)).data.astype(np.uint8)
        return montage_rows(case.image, channels, case.label, pred, labels.regions), case.affine

    return scoring.finish(cfg, out_dir,
                          source={"checkpoint": str(checkpoint), "prepared": str(prepared)},
                          model_sha=sha256_file(checkpoint), montage=montage, seconds=time.monotonic() - start)


def evaluate_folders(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Score a folder of predicted label maps against a folder of references."""
    start = time.monotonic()
    ev = cfg.evaluate
    if not (ev.predictions and ev.references):
        raise ConfigError("scoring folders needs both evaluate.predictions=DIR and evaluate.references=DIR")
    convention = str(ev.labels)
    if convention not in CONVENTIONS:
        raise ConfigError(f"evaluate.labels={convention!r} is not known; valid: {', '.join(CONVENTIONS)}")
    labels = label_spec(convention)
    pred_dir, ref_dir = Path(str(ev.predictions)).expanduser(), Path(str(ev.references)).expanduser()
    images = Path(str(ev.images)).expanduser() if ev.images else None
    matched = match_folders(pred_dir, ref_dir)
    skip_bad = bool(ev.skip_bad)
    if matched.missing and not skip_bad:
        shown = ", ".join(matched.missing[:10]) + (" ..." if len(matched.missing) > 10 else "")
        raise DataError(pred_dir, f"no prediction for {len(matched.missing)} reference case(s): {shown} "
                                  "(evaluate.skip_bad=true scores them as empty predictions and lists them)")
    if matched.unmatched:
        log.warning("%d prediction(s) have no reference and are not scored: %s", len(matched.unmatched),
                    ", ".join(matched.unmatched[:10]))
    scoring = Scoring(cfg, labels)
    ref_paths = matched.references
    for name in sorted(ref_paths):
        pred_path = matched.pairs[name][0] if name in matched.pairs else None
        try:
            if pred_path is None:
                raise DataError(pred_dir, f"case {name}: no prediction file")
            pred, ref, affine = load_pair(name, pred_path, ref_paths[name], convention)
            scoring.add(name, pred, ref, affine)
        except MedsegError as e:
            if not skip_bad:
                raise
            try:
                ref, affine = read_label_map(ref_paths[name], convention)
            except MedsegError as ref_error:
                scoring.add_unscored(name, str(ref_error))
                continue
            scoring.add(name, np.zeros_like(ref), ref, affine, status="failed", reason=str(e),
                        scored_as="empty prediction")

    def montage(name: str) -> tuple[list, np.ndarray]:
        ref, affine = read_label_map(ref_paths[name], convention)
        try:  # a failed case was scored as an empty prediction: show it that way
            pred = load_pair(name, matched.pairs[name][0], ref_paths[name], convention)[0]
        except (KeyError, MedsegError):
            pred = np.zeros_like(ref)
        files = image_for(images, name)
        if files:
            chans = [read_nifti(f, ndim=(2, 3, 4)).data for f in files]
            image = np.concatenate([c.reshape(ref.shape + (-1,)) for c in chans], axis=-1).transpose(3, 0, 1, 2)
            names = channel_names(images, image.shape[0])
        else:
            image, names = (ref > 0).astype(np.float32)[None] * 0.0, ["no image"]
        return montage_rows(image, names, ref, pred, labels.regions), affine

    return scoring.finish(cfg, out_dir,
                          source={"predictions": str(pred_dir), "references": str(ref_dir),
                                  "unmatched_predictions": ", ".join(matched.unmatched) or "none"},
                          model_sha=None, montage=montage, seconds=time.monotonic() - start)


def channel_names(images: Path, n: int) -> list[str]:
    """Channel names from a ``dataset.json`` next to the image folder (nnU-Net ``channel_names`` or
    MSD ``modality``), else ``channel 0, 1, ...``."""
    meta = images.parent / "dataset.json"
    try:
        obj = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        names = obj.get("channel_names") or obj.get("modality") or {}
        found = [str(names.get(str(i), f"channel {i}")) for i in range(n)]
    except (OSError, ValueError, AttributeError):
        found = []
    return found if len(found) == n else [f"channel {i}" for i in range(n)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
