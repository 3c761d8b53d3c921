"""``medseg compare RUN_A RUN_B``: did B do better than A, on which cases, and is it more than noise?

Each RUN is an evaluate output folder, a ``medseg run`` folder (its ``evaluate/`` is used) or a
``metrics.json``. Cases are paired by name (cases only one run scored are listed, not paired).
Per structure and metric (Dice, IoU, HD95, MSD, NSD by default): the means of A and B, the mean and
median paired difference B − A with a bootstrap 95% CI, the two-sided Wilcoxon signed-rank p-value
(scipy; zero differences dropped, ``None`` when every pair is equal or fewer than one pair differs)
and the cases that got better or worse (for HD95 and MSD lower is better). Written to
``compare.json``, ``compare.md`` and ``compare.html`` (with a paired-difference plot).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from medseg.errors import DataError
from medseg.metrics.aggregate import bootstrap_ci
from medseg.report.figures import box_strip
from medseg.report.render import Page, fmt
from medseg.utils.files import write_json

log = logging.getLogger(__name__)

METRICS = ("dice", "iou", "hd95", "msd", "nsd")
LOWER_IS_BETTER = {"hd95", "msd", "volume_diff_ml", "lesion_hd95"}


def find_metrics(run: str | Path) -> Path:
    """The ``metrics.json`` of an evaluate folder, a run folder, or the file itself."""
    p = Path(run).expanduser()
    for candidate in (p, p / "metrics.json", p / "evaluate" / "metrics.json"):
        if candidate.is_file() and candidate.name == "metrics.json":
            return candidate
    raise DataError(p, "no metrics.json here, in it, or in its evaluate/ folder (run medseg evaluate first)")


def load_run(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read a run's ``metrics.json``, checking that it has per-case values."""
    path = find_metrics(run)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(path, f"not a readable metrics.json ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("cases"), list):
        raise DataError(path, "metrics.json has no per-case 'cases' list (written by an older medseg?)")
    return path, obj


def wilcoxon_p(diff: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped)."""
    nonzero = diff[diff != 0]
    if nonzero.size < 1:
        return None
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)


def compare_runs(run_a: str | Path, run_b: str | Path, out_dir: Path,
                 metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """Compare two evaluated runs and write ``compare.json``, ``compare.md`` and ``compare.html``."""
    path_a, a = load_run(run_a)
    path_b, b = load_run(run_b)
    cases_a = {c["case"]: c for c in a["cases"]}
    cases_b = {c["case"]: c for c in b["cases"]}
    paired = [n for n in cases_a if n in cases_b]
    if not paired:
        raise DataError(path_b, f"no case in common with {path_a}: nothing to compare")
    structures = [s for s in cases_a[paired[0]] if isinstance(cases_a[paired[0]][s], dict)
                  and s in cases_b[paired[0]]]
    warnings = []
    conv_a, conv_b = a.get("convention", {}).get("empty"), b.get("convention", {}).get("empty")
    if conv_a != conv_b:
        warnings.append(f"the runs use different empty-mask conventions: A {conv_a!r}, B {conv_b!r}")
    if a.get("data_fingerprint") and b.get("data_fingerprint") and a["data_fingerprint"] != b["data_fingerprint"]:
        warnings.append("the runs were scored against different reference data (data fingerprints differ)")
    result: dict[str, Any] = {"a": str(path_a), "b": str(path_b), "n_paired": len(paired),
                              "only_in_a": [n for n in cases_a if n not in cases_b],
                              "only_in_b": [n for n in cases_b if n not in cases_a],
                              "warnings": warnings,
                              "definition": "difference = B - A; better = B improves on A (higher Dice/IoU/NSD, "
                                            "lower HD95/MSD); Wilcoxon signed-rank, two-sided, zero differences "
                                            "dropped; bootstrap 95% CI of the mean difference (2000 resamples)",
                              "structures": {}, "cases": []}
    for s in structures:
        result["structures"][s] = {}
        for m in metrics:
            pairs = [(n, cases_a[n][s].get(m), cases_b[n][s].get(m)) for n in paired]
            pairs = [(n, x, y) for n, x, y in pairs if x is not None and y is not None]
            if not pairs:
                continue
            names = [n for n, _, _ in pairs]
            va, vb = np.array([x for _, x, _ in pairs], float), np.array([y for _, _, y in pairs], float)
            diff = vb - va
            sign = -1.0 if m in LOWER_IS_BETTER else 1.0
            gain = sign * diff
            order = np.argsort(-gain)
            result["structures"][s][m] = {
                "n": len(pairs), "mean_a": float(va.mean()), "mean_b": float(vb.mean()),
                "mean_diff": float(diff.mean()), "median_diff": float(np.median(diff)),
                "ci95_diff": bootstrap_ci(diff), "wilcoxon_p": wilcoxon_p(diff),
                "better": [names[i] for i in order if gain[i] > 0],
                "worse": [names[i] for i in order[::-1] if gain[i] < 0],
                "unchanged": [names[i] for i in range(len(names)) if gain[i] == 0],
            }
    for n in paired:
        result["cases"].append({"case": n, **{s: {m: {"a": cases_a[n][s].get(m), "b": cases_b[n][s].get(m)}
                                                   for m in metrics} for s in structures}})
    write_json(out_dir / "compare.json", result)
    _write_page(out_dir, result, structures, paired, cases_a, cases_b)
    for w in warnings:
        log.warning("compare: %s", w)
    return {"n_paired": len(paired), "compare": str(out_dir / "compare.json"),
            "report": str(out_dir / "compare.html")}


def _write_page(out_dir: Path, result: dict[str, Any], structures: list[str], paired: list[str],
                cases_a: dict, cases_b: dict) -> None:
    page = Page("medseg run comparison", out_dir)
    page.bullets([f"A: {result['a']}", f"B: {result['b']}", f"{result['n_paired']} paired cases",
                  result["definition"]]
                 + ([f"only in A: {', '.join(result['only_in_a'])}"] if result["only_in_a"] else [])
                 + ([f"only in B: {', '.join(result['only_in_b'])}"] if result["only_in_b"] else []))
    for w in result["warnings"]:
        page.paragraph("Warning: " + w, note=True)
    page.heading("Paired differences")
    rows = []
    for s in structures:
        for m, r in result["structures"][s].items():
            ci = r["ci95_diff"]
            rows.append([s, m, str(r["n"]), fmt(r["mean_a"]), fmt(r["mean_b"]), f"{r['mean_diff']:+.4f}",
                         f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "–", fmt(r["wilcoxon_p"], 4),
                         str(len(r["better"])), str(len(r["worse"]))])
    page.table(["structure", "metric", "n", "mean A", "mean B", "mean B−A", "95% CI", "Wilcoxon p", "better",
                "worse"], rows, sortable=True)
    figdir = out_dir / "figures"
    page.figure("Dice per case, B − A (green: better, red: worse)",
                box_strip({s: [cases_b[n][s]["dice"] - cases_a[n][s]["dice"] for n in paired
                               if cases_a[n][s].get("dice") is not None and cases_b[n][s].get("dice") is not None]
                           for s in structures}, "Dice B − A", figdir / "compare_dice.png", signed=True))
    first = structures[0]
    dice = result["structures"][first].get("dice")
    if dice:
        page.heading(f"Cases that changed ({first} Dice)")
        page.bullets([f"better in B: {', '.join(dice['better']) or 'none'}",
                      f"worse in B: {', '.join(dice['worse']) or 'none'}"])
    page.heading("Per case (click a heading to sort)")
    header = ["case"] + [f"{s} Dice {x}" for s in structures[:3] for x in ("A", "B", "B−A")]
    body = []
    for n in paired:
        row = [n]
        for s in structures[:3]:
            x, y = cases_a[n][s].get("dice"), cases_b[n][s].get("dice")
            row += [fmt(x), fmt(y), f"{y - x:+.3f}" if x is not None and y is not None else "–"]
        body.append(row)
    page.table(header, body, sortable=True, scroll=True)
    page.write("compare")
