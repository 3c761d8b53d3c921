"""The evaluation report: what a clinician, reviewer or challenge organiser reads.

Sections: conventions; summary table with bootstrap 95% confidence intervals; lesion-wise (BraTS
2023) table; Dice and HD95 box/strip plots per structure; Bland–Altman volume agreement; the
detection summary (case-level confusion table, sensitivity, specificity, ROC curve, false
detections); the worst and the best cases, each with a montage of three orthogonal slices through
the tumour showing prediction and reference outlines on the relevant contrast (whole tumour on
FLAIR, enhancing tumour on T1-Gd, when those channels exist); failed cases; calibration (ECE before
and after temperature scaling, reliability diagram) and quality control (ROC AUC of the QC score
for bad cases, flagged cases and their reasons; :mod:`medseg.report.review`); a sortable per-case
table; provenance (config, commit, data fingerprint, model hash, library versions, timings).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.metrics.references import Reference
from medseg.metrics.scoring import Evaluation
from medseg.report.figures import bland_altman, box_strip, outline_montage, roc_figure
from medseg.report.render import Page, fmt
from medseg.report.viewer import EvaluationViewer, scored_case_loader
from medseg.report.review import review_sections
from medseg.utils.files import atomic_path, write_json

#: ``(caption, image, reference mask, predicted mask)`` rows and the affine, for one case.
MontageLoader = Callable[[str], tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], np.ndarray]]

CONTRAST_FOR_REGION = {
    "whole_tumour": re.compile(r"flair|t2f", re.I),
    "tumour_core": re.compile(r"t1.?gd|t1.?ce|t1c|gad|contrast", re.I),
    "enhancing_tumour": re.compile(r"t1.?gd|t1.?ce|t1c|gad|contrast", re.I),
}


def montage_rows(image: np.ndarray, channels: Sequence[str], ref: np.ndarray, pred: np.ndarray,
                 regions: Mapping[str, Sequence[int]]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Montage rows: the first region on its relevant contrast, and the innermost region on its own
    contrast when that is another channel (e.g. whole tumour on FLAIR, enhancing tumour on T1-Gd)."""
    names = list(regions)
    picks: list[tuple[int, str]] = []
    for region in [names[0]] + names[1:][-1:]:
        pattern = CONTRAST_FOR_REGION.get(region)
        k = next((i for i, c in enumerate(channels) if pattern is not None and pattern.search(c)), 0)
        if all(k != kk for kk, _ in picks):
            picks.append((k, region))
    return [(f"{region.replace('_', ' ')} on {channels[k] if k < len(channels) else 'image'}", image[k],
             np.isin(ref, list(regions[region])), np.isin(pred, list(regions[region]))) for k, region in picks]


def case_score(record: Mapping[str, Any], regions: Sequence[str]) -> float:
    """Mean Dice over the regions (the ranking used for worst / best cases); failed cases rank lowest."""
    if record.get("metrics") is None:
        return -1.0
    values = [record["metrics"][r]["dice"] for r in regions if record["metrics"][r]["dice"] is not None]
    return float(np.mean(values)) if values else -1.0


def summary_table(summary: Mapping[str, Any], nsd_mm: float) -> tuple[list[str], list[list[str]]]:
    header = ["structure", "n", "Dice mean [95% CI]", "Dice median (IQR)", "IoU", "HD95 mm [95% CI]",
              "HD95 median", "MSD mm", f"NSD@{nsd_mm:g}mm", "sensitivity", "precision", "vol. diff ml"]
    rows = []
    for name, m in summary.items():
        d, h = m["dice"], m["hd95"]

        def ci(x: Mapping[str, Any], digits: int) -> str:
            return (f"{fmt(x['mean'], digits)} [{fmt(x['ci95'][0], digits)}, {fmt(x['ci95'][1], digits)}]"
                    if x["ci95"] else fmt(x["mean"], digits))

        rows.append([name, str(d["n"]), ci(d, 3), f"{fmt(d['median'])} ({fmt(d['iqr'])})", fmt(m["iou"]["mean"]),
                     ci(h, 1), fmt(h["median"], 1), fmt(m["msd"]["mean"], 2), fmt(m["nsd"]["mean"]),
                     fmt(m["sensitivity"]["mean"]), fmt(m["precision"]["mean"]), fmt(m["volume_diff_ml"]["mean"], 2)])
    return header, rows


def write_evaluation_report(out_dir: Path, *, title: str, summary: Mapping[str, Any],
                            records: Sequence[Mapping[str, Any]], regions: Mapping[str, Sequence[int]],
                            detection: Mapping[str, Any], conventions: Sequence[str], provenance: Mapping[str, Any],
                            config_yaml: str, montage: MontageLoader | None, n_figures: int,
                            nsd_mm: float, review: Mapping[str, Any] | None = None,
                            viewer: EvaluationViewer | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and the PNG figures under ``figures/``; with ``viewer``,
    the interactive NiiVue viewer of every case in ``report.html``)."""
    figdir = out_dir / "figures"
    region_names = list(regions)
    scored = [r for r in records if r.get("metrics") is not None]
    failed = [r for r in records if r.get("status") != "ok"]
    page = Page(title, out_dir)
    page.paragraph(f"{len(records)} cases, {len(failed)} failed; regions: "
                   + ", ".join(f"{k} = {list(v)}" for k, v in regions.items()) + ".")
    if provenance.get("missing_channels"):
        page.paragraph(f"Missing-contrast pattern: without {provenance['missing_channels']} (evaluate.drop_channels: "
                       "zeroed after normalisation, as for a missing contrast); every figure below is for this "
                       "pattern.", note=True)
    page.heading("Conventions")
    page.bullets(conventions)
    if failed:
        page.paragraph(f"{len(failed)} case(s) failed and are scored as described under 'Failed cases': "
                       + ", ".join(r["case"] for r in failed), note=True)
    _summary_section(page, summary, scored, region_names, nsd_mm)
    if scored:
        _distribution_section(page, summary, scored, region_names, figdir)
    _detection_section(page, detection, figdir)
    if montage is not None and n_figures > 0 and scored:
        _case_figures_section(page, scored, region_names, montage, n_figures, figdir)
    if failed:
        page.heading("Failed cases")
        page.table(["case", "reason", "scored as"],
                   [[r["case"], r.get("reason", ""), r.get("scored_as", "not scored")] for r in failed])
    if review:
        review_sections(page, review, figdir)
    _per_case_section(page, records, region_names, detection)
    if viewer is not None:
        viewer.add_to(page, records, regions, {r["case"]: case_score(r, region_names) for r in records})
    page.heading("Provenance")
    page.table(["item", "value"], [[k, _flat(v)] for k, v in provenance.items()])
    page.preformatted("Resolved configuration", config_yaml)
    return page.write("report")


def _summary_section(page: Page, summary: Mapping[str, Any], scored: Sequence[Mapping[str, Any]],
                     region_names: Sequence[str], nsd_mm: float) -> None:
    page.heading("Summary")
    header, rows = summary_table(summary, nsd_mm)
    page.table(header, rows, cls="compact")
    lesion_rows = [[r, fmt(summary[r]["lesion_dice"]["mean"]), fmt(summary[r]["lesion_hd95"]["mean"], 1),
                    *[str(int(sum(c["metrics"][r][f"lesion_{k}"] for c in scored))) for k in ("tp", "fp", "fn")],
                    fmt(summary[r]["lesion_f1"]["mean"])]
                   for r in region_names if "lesion_dice" in summary.get(r, {})]
    if lesion_rows:
        page.heading("Lesion-wise (BraTS 2023 rules)", 3)
        page.table(["region", "lesion Dice", "lesion HD95 mm", "TP", "FP", "FN", "detection F1"], lesion_rows)


def _distribution_section(page: Page, summary: Mapping[str, Any], scored: Sequence[Mapping[str, Any]],
                          region_names: Sequence[str], figdir: Path) -> None:
    page.heading("Distributions")
    structures = list(summary)
    page.figure("Dice per structure (box: quartiles; dots: cases)",
                box_strip({s: [c["metrics"][s]["dice"] for c in scored] for s in structures}, "Dice",
                          figdir / "dice.png"))
    page.figure("HD95 per structure (mm)",
                box_strip({s: [c["metrics"][s]["hd95"] for c in scored] for s in structures}, "HD95 (mm)",
                          figdir / "hd95.png", lower_is_better=True))
    page.figure("Volume agreement (Bland–Altman): predicted − reference against their mean",
                bland_altman({r: ([c["metrics"][r]["volume_pred_ml"] for c in scored],
                                  [c["metrics"][r]["volume_ref_ml"] for c in scored]) for r in region_names},
                             figdir / "bland_altman.png"))


def _case_figures_section(page: Page, scored: Sequence[Mapping[str, Any]], region_names: Sequence[str],
                          montage: MontageLoader, n_figures: int, figdir: Path) -> None:
    """Montages of the worst and of the best ``n_figures`` cases."""
    ranked = sorted(scored, key=lambda c: case_score(c, region_names))
    worst = ranked[:n_figures]
    best = [c for c in ranked[::-1][:n_figures] if c not in worst]
    for heading, group in ((f"Worst {len(worst)} cases", worst), (f"Best {len(best)} cases", best)):
        if not group:
            continue
        page.heading(heading)
        for c in group:
            rows_, affine = montage(c["case"])
            dice_text = ", ".join(f"{r} {fmt(c['metrics'][r]['dice'])}" for r in region_names)
            shown = "; ".join(r[0] for r in rows_)
            page.figure(f"{c['case']} — Dice {dice_text} — outlines: {shown}",
                        outline_montage(rows_, affine, f"{c['case']}: mean Dice {case_score(c, region_names):.3f}",
                                        figdir / f"case_{c['case']}.png"))


def _per_case_section(page: Page, records: Sequence[Mapping[str, Any]], region_names: Sequence[str],
                      detection: Mapping[str, Any]) -> None:
    page.heading("Per case (click a heading to sort)")
    case_header = ["case", "status", *[f"{r} Dice" for r in region_names], *[f"{r} HD95" for r in region_names],
                   f"{region_names[0]} ref ml", f"{region_names[0]} pred ml", "lesions found", "seconds"]
    by_case = {d["case"]: d for d in detection.get("cases", [])}
    case_rows, classes = [], []
    for c in records:
        m = c.get("metrics")
        det = by_case.get(c["case"], {})
        case_rows.append([c["case"], c.get("status", "ok"),
                          *[fmt(m[r]["dice"]) if m else "–" for r in region_names],
                          *[fmt(m[r]["hd95"], 1) if m else "–" for r in region_names],
                          fmt(m[region_names[0]]["volume_ref_ml"], 2) if m else "–",
                          fmt(m[region_names[0]]["volume_pred_ml"], 2) if m else "–",
                          str(det.get("n_lesions", "–")), fmt(c.get("seconds"), 1)])
        classes.append("failed" if c.get("status") != "ok" else "")
    page.table(case_header, case_rows, sortable=True, row_classes=classes, scroll=True)


def _detection_section(page: Page, detection: Mapping[str, Any], figdir: Path) -> None:
    cases = detection.get("cases", [])
    if not cases:
        return
    cl = detection["case_level"]
    page.heading("Tumour detection")
    page.paragraph(f"Is there a tumour? A case is called positive when its {detection['convention']['tumour_present']}"
                   f" ({detection['convention']['tumour']}).")
    page.table(["", "reference: tumour", "reference: no tumour"],
               [["predicted: tumour", f"{cl['tp']} (TP)", f"{cl['fp']} (FP)"],
                ["predicted: no tumour", f"{cl['fn']} (FN)", f"{cl['tn']} (TN)"]])
    ll = detection["lesion_level"]
    page.bullets([f"case-level sensitivity {fmt(cl['sensitivity'])}, specificity {fmt(cl['specificity'])}",
                  f"ROC AUC (predicted tumour volume) {fmt(cl['roc_auc_volume'])}, "
                  f"(maximum foreground probability) {fmt(cl.get('roc_auc_max_probability'))}",
                  f"lesion level: {ll['tp']} TP, {ll['fp']} FP, {ll['fn']} FN; precision {fmt(ll['precision'])}, "
                  f"recall {fmt(ll['recall'])}"])
    false_pos = [c for c in cases if c["tumour_present"] and not c["reference_tumour_present"]]
    missed = [c for c in cases if not c["tumour_present"] and c["reference_tumour_present"]]
    if false_pos:
        page.paragraph("False detections (tumour-free reference, tumour predicted): "
                       + ", ".join(f"{c['case']} ({c['tumour_volume_ml']:.2f} ml in {c['n_lesions']} lesion(s))"
                                   for c in false_pos), note=True)
    if missed:
        page.paragraph("Missed tumours (tumour in the reference, none predicted): "
                       + ", ".join(c["case"] for c in missed), note=True)
    truths = [c["reference_tumour_present"] for c in cases]
    if any(truths) and not all(truths):
        curves = {"predicted tumour volume": ([c["tumour_volume_ml"] for c in cases], truths)}
        if all(c.get("max_foreground_prob") is not None for c in cases):
            curves["max. foreground probability"] = ([c["max_foreground_prob"] for c in cases], truths)
        page.figure("Case-level ROC curve of the tumour-present call", roc_figure(curves, figdir / "roc.png"))
    else:
        page.paragraph("No ROC curve: the reference set does not contain both tumour and tumour-free cases.")


def _flat(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k} {_flat(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_evaluation(out_dir: Path, evaluation: Evaluation, *, config_yaml: str, montage: MontageLoader | None,
                     n_figures: int, viewer: EvaluationViewer | None = None) -> None:
    """Write everything ``evaluate`` leaves: ``metrics.json``, ``detections.json``, ``metrics.csv``,
    ``report.md``, ``report.html`` and ``figures/``."""
    write_json(out_dir / "metrics.json", evaluation.metrics)
    write_json(out_dir / "detections.json", evaluation.detection)
    write_csv(out_dir / "metrics.csv", evaluation.csv_rows())
    metrics = evaluation.metrics
    write_evaluation_report(out_dir, title="medseg evaluation report", summary=metrics["summary"],
                            records=evaluation.records, regions=evaluation.labels.regions,
                            detection=evaluation.detection,
                            conventions=[*evaluation.report_conventions,
                                         *postprocessing_lines(metrics.get("postprocessing"))],
                            provenance=metrics["provenance"], config_yaml=config_yaml, montage=montage,
                            n_figures=n_figures, nsd_mm=evaluation.nsd_mm, review=metrics.get("review"),
                            viewer=viewer)


def postprocessing_lines(post: Mapping[str, Any] | None) -> list[str]:
    """The report's sentence on the post-processing the predictions had (checkpoint evaluations):
    the small-component removal and the small-enhancing rule, its threshold, where it came from and
    the test cases it relabelled."""
    if not post:
        return []
    line = f"Post-processing, as predict applies it: tumour components under {post['min_component_ml']:g} ml removed"
    fit, ml = post.get("enhancing_fit"), float(post.get("min_enhancing_ml") or 0)
    source = (f"fitted on {fit['n_cases']} validation cases, enhancing-tumour Dice there {fit['mean_dice_before']:.3f}"
              f" -> {fit['mean_dice_after']:.3f}" if fit else "configured")
    if ml > 0:
        cases = post.get("cases_relabelled") or {}
        line += (f"; a case's enhancing tumour under {ml:g} ml relabelled as tumour core (threshold {source}); "
                 f"cases relabelled here: " + (", ".join(f"{c} ({v:.2f} ml)" for c, v in cases.items()) or "none"))
    elif fit:
        line += f"; small-enhancing rule off (no threshold gained on the {fit['n_cases']} validation cases)"
    return [line + "."]


def montage_loader(references: Mapping[str, Reference], files: Mapping[str, Path], convention: str,
                   regions: Mapping[str, Sequence[int]]) -> MontageLoader:
    """Montage rows of a scored case, loaded by :func:`medseg.report.viewer.scored_case_loader`."""
    load = scored_case_loader(references, files, convention)

    def montage(name: str) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
        image, channels, affine, ref, pred = load(name)
        return montage_rows(image, channels, ref, pred, regions), affine

    return montage


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows as CSV (header from the first row), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
