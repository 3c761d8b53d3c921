"""The report's calibration and quality-control sections (``metrics.json`` ``review``, written by
``evaluate``): the temperature, the expected calibration error before and after scaling with a
reliability diagram, how well the QC score ranks the worst cases, and the cases flagged for review."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medseg.report.render import Page, fmt  # noqa: E402


def reliability_diagram(test: Mapping[str, Mapping[str, Mapping[str, Any]]], out: Path) -> Path:
    """One panel per region: observed frequency against mean predicted probability per bin, before
    (dashed) and after (solid) temperature scaling, with the diagonal of perfect calibration."""
    fig, axes = plt.subplots(1, len(test), figsize=(3.4 * len(test), 3.4), dpi=80, squeeze=False)
    for ax, (region, curves) in zip(axes[0], test.items()):
        ax.plot([0, 1], [0, 1], color="#9e9e9e", linewidth=1)
        for key, style, colour in (("before", "--", "#ff7043"), ("after", "-", "#1565c0")):
            c = curves[key]
            ax.plot(c["confidence"], c["frequency"], style, marker="o", markersize=3, color=colour,
                    label=f"{key}: ECE {fmt(c['ece'], 4)}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(region.replace("_", " "), fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def review_sections(page: Page, review: Mapping[str, Any], figdir: Path) -> None:
    """Write the calibration and the QC sections."""
    cal, qc = review["calibration"], review["qc"]
    page.heading("Calibration")
    temps = ", ".join(f"{t:.3f}" for t in cal["temperature"])
    page.paragraph(f"Temperature {temps} ({cal['scope']}) fitted on {cal['n_cases']} validation case(s), "
                   f"{cal['n_voxels']} voxels within {cal['band_mm']:g} mm of the reference or predicted tumour. "
                   f"{cal['method']}. ECE: {cal['ece_definition']}; measured on the evaluated cases.")
    page.table(["region", "voxels", "ECE before", "ECE after"],
               [[r, str(c["before"]["n_voxels"]), fmt(c["before"]["ece"], 4), fmt(c["after"]["ece"], 4)]
                for r, c in cal["test"].items()])
    if any(c["before"]["n_voxels"] for c in cal["test"].values()):
        page.figure("Reliability diagram of each region's probability in the tumour band (dashed: before, "
                    "solid: after temperature scaling)", reliability_diagram(cal["test"], figdir / "reliability.png"))
    _qc_section(page, qc)


def _qc_section(page: Page, qc: Mapping[str, Any]) -> None:
    ranking = qc["ranking"]
    page.heading("Quality control")
    page.paragraph(f"Each case's QC score is the largest ratio of a QC signal to its threshold from the validation "
                   f"cases; a score above 1 flags the case for review ({ranking['n_flagged']} of "
                   f"{ranking['n_cases']} flagged). A case is bad below Dice {ranking['review_dice']:g}.")
    page.table(["region", "cases", "bad", "ROC AUC of the score", "Dice flagged", "Dice unflagged",
                "flagged bad", "flagged good"],
               [[r, str(v["n"]), str(v["n_bad"]), fmt(v["roc_auc"]), fmt(v["dice_flagged"]), fmt(v["dice_unflagged"]),
                 str(v["flagged_bad"]), str(v["flagged_good"])] for r, v in ranking["regions"].items()])
    cases = sorted(qc["cases"].items(), key=lambda kv: -(kv[1]["score"] or 0.0))
    page.table(["case", "QC score", "review", "reasons"],
               [[name, fmt(q["score"], 2), "yes" if q["review"] else "no", "; ".join(q["reasons"]) or "–"]
                for name, q in cases], sortable=True, scroll=True)
