"""``evaluate``: predict the test split with a checkpoint and score it on the native grid.

Inputs: ``paths.checkpoint`` (``best.pt`` of train) and ``paths.prepared`` (for the test split).
Outputs: ``predictions/<case>.nii.gz``, ``metrics.json`` (summary per structure, conventions,
provenance), ``metrics.csv`` (one row per case and structure), ``report.md``, ``report.html``,
``figures/``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medseg.data.io.nifti import write_nifti
from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.data.sources import CaseRef, Source, make_source
from medseg.engine.inference import CasePredictor, torch_network
from medseg.engine.targets import Target
from medseg.engine.trainer import load_checkpoint, pick_device
from medseg.errors import DataError
from medseg.metrics.case import case_metrics
from medseg.metrics.detection import case_level, detect, roc_auc
from medseg.metrics.overlap import EmptyConvention
from medseg.models.unet import build_model, load_weights
from medseg.report.figures import boxplot, outline_montage
from medseg.report.render import write_reports
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
    pred = CasePredictor(torch_network(model, device), spec, meta["patch_size"], checkpoint_target(meta),
                         overlap=float(inf_cfg["overlap"]), batch_size=int(inf_cfg["sw_batch_size"]),
                         tta_axes=inf_cfg.get("tta_flips", []),
                         min_component_ml=float(inf_cfg.get("min_component_ml") or 0.0))
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
                       "roc_auc_max_probability": roc_auc([d["max_foreground_prob"] for d in detections], truths)},
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


def evaluate_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Run the evaluate stage (see module docstring)."""
    checkpoint = require_path(cfg, "checkpoint", "evaluate")
    prepared = require_path(cfg, "prepared", "evaluate")
    datalist, plan = load_prepared(prepared)
    test = datalist["test"]
    if not test:
        raise DataError(prepared / "datalist.json", "the test split is empty: nothing to evaluate")
    inf_cfg = plain(cfg.evaluate.inference)
    predictor, meta = predictor_from_checkpoint(checkpoint, inf_cfg)
    labels = LabelSpec.from_json(meta["plan"]["labels"])
    empty = EmptyConvention(one_empty_hd=float(cfg.evaluate.empty_hd_mm))
    refs = source_refs(plan, [e["name"] for e in test])
    per_case, rows, shown, detections = [], [], [], []
    min_ml = float(cfg.evaluate.detection_min_ml)
    for entry in test:
        source, ref = refs[entry["name"]]
        case = source.load(ref)
        pred = predictor(case.image, case.affine, name=entry["name"])
        with atomic_path(out_dir / "predictions" / f"{entry['name']}.nii.gz") as tmp:
            write_nifti(tmp, pred.label, case.affine)
        m = case_metrics(pred.label, case.label, case.spacing, labels,
                         float(cfg.evaluate.hd_percentile), empty, float(cfg.evaluate.nsd_tolerance_mm))
        per_case.append(m)
        for structure, vals in m.items():
            rows.append({"case": entry["name"], "structure": structure, **vals,
                         "max_foreground_prob": pred.max_foreground_prob, "seconds": pred.seconds})
        shown.append((entry["name"], case, pred.label, m))
        found = detect(pred.label, case.affine, labels.regions, min_ml)
        truth = detect(case.label, case.affine, labels.regions, min_ml)
        detections.append({"case": entry["name"], **found, "max_foreground_prob": pred.max_foreground_prob,
                           "reference_tumour_present": truth["tumour_present"],
                           "reference_n_lesions": truth["n_lesions"]})
        log.info("evaluate %s: %s (%.1f s)", entry["name"],
                 ", ".join(f"{r} Dice {m[r]['dice']:.3f}" for r in labels.regions), pred.seconds)
    summary = aggregate(per_case)
    _write_csv(out_dir / "metrics.csv", rows)
    model_sha = sha256_file(checkpoint)
    result = {
        "convention": {"empty": empty.describe(), "hd": HD_DEFINITION,
                       "msd": "mean of both directions' surface distances pooled (MedPy assd), mm",
                       "nsd": f"normalised surface Dice at {float(cfg.evaluate.nsd_tolerance_mm):g} mm",
                       "rates": "sensitivity/precision undefined (null, skipped in aggregates) when the "
                                "reference/prediction is empty",
                       "aggregate": "mean, median, std, IQR and bootstrap 95% CI of the mean (2000 resamples)",
                       "grid": "native grid of each source image (predictions restored from the model grid)"},
        "regions": {k: list(v) for k, v in labels.regions.items()},
        "summary": summary,
        "cases": [{"case": e["name"], **m} for e, m in zip(test, per_case)],
        "model_sha256": model_sha,
        "checkpoint": str(checkpoint),
        "n_cases": len(test),
    }
    write_json(out_dir / "metrics.json", result)
    write_json(out_dir / "detections.json", detection_summary(detections, per_case, labels, min_ml))
    _report(out_dir, summary, per_case, test, shown, labels, empty, model_sha, int(cfg.evaluate.n_figures),
            str(meta["plan"]["preprocessing"]["channels"][0]))
    for region in labels.regions:
        log.info("test %-16s Dice %.4f (median %.4f), HD95 %.2f mm", region,
                 summary[region]["dice"]["mean"], summary[region]["dice"]["median"], summary[region]["hd95"]["mean"])
    return {"n_cases": len(test),
            "dice": {r: summary[r]["dice"]["mean"] for r in labels.regions},
            "hd95_mm": {r: summary[r]["hd95"]["mean"] for r in labels.regions},
            "metrics": str(out_dir / "metrics.json")}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _report(out_dir: Path, summary: dict, per_case: list, test: list, shown: list, labels: LabelSpec,
            empty: EmptyConvention, model_sha: str, n_figures: int, channel: str) -> None:
    regions = list(labels.regions)
    figures = [("Dice per structure (one dot per case)",
                boxplot({s: [c[s]["dice"] for c in per_case] for s in per_case[0]}, "Dice",
                        out_dir / "figures" / "dice_boxplot.png"))]
    worst_first = sorted(shown, key=lambda t: t[3][regions[0]]["dice"])
    for name, case, pred, m in worst_first[:n_figures]:
        png = outline_montage(case.image[0], case.label > 0, pred > 0, case.affine,
                              f"{name}: whole-tumour Dice {m[regions[0]]['dice']:.3f}",
                              out_dir / "figures" / f"{name}.png")
        figures.append((f"{name}: whole-tumour outlines on {channel}", png))
    header = ["case", *[f"{r} Dice" for r in regions], *[f"{r} HD95" for r in regions], "WT ref ml", "WT pred ml"]
    rows = [[e["name"], *[f"{m[r]['dice']:.3f}" for r in regions], *[f"{m[r]['hd95']:.1f}" for r in regions],
             f"{m[regions[0]]['volume_ref_ml']:.1f}", f"{m[regions[0]]['volume_pred_ml']:.1f}"]
            for e, m in zip(test, per_case)]
    notes = [f"{len(test)} test cases; regions: " + ", ".join(f"{k} = {list(v)}" for k, v in labels.regions.items()),
             f"Empty-mask convention — {empty.describe()}", HD_DEFINITION, f"model sha256 {model_sha}"]
    write_reports(out_dir, "medseg evaluation report", summary, header, rows, figures, notes)
