"""The evaluation report's interactive viewer: every scored case in NiiVue, most suspicious first.

The machinery (NiiVue, the encoding, the size bounds) is :mod:`medseg.utils.niivue`; this module
says what the evaluation shows: per case the display contrasts, the reference and predicted regions,
the uncertainty map ``<case>_uncertainty.nii.gz`` beside the prediction when there is one, and a case
list sorted by QC score (``qc.score`` of the case's record or of ``predictions.json`` in the
predictions folder, highest first), or by mean Dice over the regions (worst first) when no case has
one, with each case's QC flag and Dice per region.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import EvaluateConfig
from medseg.errors import MedsegError
from medseg.metrics.external import read_prediction
from medseg.metrics.references import Reference
from medseg.report.render import Page, fmt
from medseg.utils.files import read_json
from medseg.utils.niivue import (CaseVolumes, ViewerBounds, ViewerCase, ViewerStats, qc_cells, read_uncertainty,
                                 region_map, viewer_bounds, viewer_html)

log = logging.getLogger(__name__)

#: ``(image (C, X, Y, Z), channel names, affine, reference, prediction)`` of one scored case, internal codes.
ScoredCase = tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]


def scored_case_loader(references: Mapping[str, Reference], files: Mapping[str, Path],
                       convention: str) -> Callable[[str], ScoredCase]:
    """Loader of a scored case: its reference (and image, zeros named ``no image`` when there is
    none) and its prediction file (empty when it is missing or was refused, as it was scored)."""

    def load(name: str) -> ScoredCase:
        ref, affine, image, channels = references[name].case()
        try:
            pred = read_prediction(name, files[name], convention, ref, affine)
        except (KeyError, MedsegError):
            pred = np.zeros_like(ref)
        if image is None:
            image, channels = np.zeros((1, *ref.shape), dtype=np.float32), ["no image"]
        return image, list(channels), affine, ref, pred

    return load


def qc_records(predictions: Path) -> dict[str, Mapping[str, Any]]:
    """Per case the ``qc`` record of ``predictions.json`` in the predictions folder (empty without one)."""
    path = predictions / "predictions.json"
    if not path.is_file():
        return {}
    cases = read_json(path).get("cases", [])
    return {c["case"]: c["qc"] for c in cases if isinstance(c, Mapping) and isinstance(c.get("qc"), Mapping)}


def review_order(names: Sequence[str], qc: Mapping[str, Mapping[str, Any]],
                 fallback: Mapping[str, float]) -> list[str]:
    """Cases by QC score, highest (most suspicious) first, those without one after them; by the
    ``fallback`` score ascending (e.g. mean Dice, worst first) when no case has a QC score."""
    scores = {n: qc[n].get("score") for n in names if n in qc and qc[n].get("score") is not None}
    if scores:
        return sorted(names, key=lambda n: (n not in scores, -float(scores.get(n, 0.0)), n))
    return sorted(names, key=lambda n: (fallback.get(n, 0.0), n))


def evaluation_viewer_cases(records: Sequence[Mapping[str, Any]], regions: Mapping[str, Sequence[int]],
                            load: Callable[[str], ScoredCase], files: Mapping[str, Path],
                            qc: Mapping[str, Mapping[str, Any]], fallback: Mapping[str, float]
                            ) -> tuple[list[ViewerCase], list[str]]:
    """The case list of the evaluation viewer and its columns."""
    by_name = {r["case"]: r for r in records}
    qc = {**qc, **{n: r["qc"] for n, r in by_name.items() if isinstance(r.get("qc"), Mapping)}}
    columns = ["case", "QC score", "review", *[f"{r} Dice" for r in regions], "status"]

    def loader(name: str) -> Callable[[], CaseVolumes]:
        def volumes() -> CaseVolumes:
            image, channels, affine, ref, pred = load(name)
            return CaseVolumes(image, channels, affine, region_map(pred, regions), region_map(ref, regions),
                               read_uncertainty(files.get(name), pred.shape))
        return volumes

    cases = []
    for name in review_order(list(by_name), qc, fallback):
        m = by_name[name].get("metrics")
        dice = [fmt(m[r]["dice"]) if m else "–" for r in regions]
        cases.append(ViewerCase(name, [name, *qc_cells(qc.get(name)), *dice, by_name[name].get("status", "ok")],
                                loader(name)))
    return cases, columns


def viewer_section(page: Page, cases: Sequence[ViewerCase], columns: Sequence[str], regions: Sequence[str],
                   bounds: ViewerBounds) -> ViewerStats:
    """Add the interactive viewer to ``page`` (HTML; the Markdown says where to find it)."""
    fragment, stats = viewer_html(cases, columns, regions, bounds)
    page.heading("Interactive viewer", anchor="viewer")
    text = ("Click a case to load it (the list is sorted by QC score, most suspicious first, or by mean Dice, "
            "worst first, without QC scores). Scroll or drag in a view, or use the x/y/z sliders, to move "
            "through the slices; checkboxes toggle the prediction (filled colours), the reference (second "
            "swatch colour, drawn under the prediction), the uncertainty map and each region. Volumes are "
            "cropped to the head and sampled every n voxels to fit the size bound: " + stats.sentence())
    page.raw(fragment, markdown=f"{text} Open report.html in a browser (works offline) to use it.", intro=text)
    log.info("viewer: %s", stats.sentence())
    return stats


@dataclass
class EvaluationViewer:
    """What the evaluation report's viewer needs beside the records: the scored-case loader, the
    prediction files (uncertainty maps lie beside them), the QC records per case and the bounds."""

    load: Callable[[str], ScoredCase]
    files: Mapping[str, Path]
    bounds: ViewerBounds
    qc: Mapping[str, Mapping[str, Any]]

    def add_to(self, page: Page, records: Sequence[Mapping[str, Any]], regions: Mapping[str, Sequence[int]],
               fallback: Mapping[str, float]) -> ViewerStats:
        """Add the viewer section for ``records`` to ``page``; ``fallback`` orders the cases without QC."""
        cases, columns = evaluation_viewer_cases(records, regions, self.load, self.files, self.qc, fallback)
        return viewer_section(page, cases, columns, list(regions), self.bounds)


def evaluation_viewer(ev: EvaluateConfig, load: Callable[[str], ScoredCase], files: Mapping[str, Path],
                      predictions: Path, qc: Mapping[str, Mapping[str, Any]] | None) -> EvaluationViewer | None:
    """The viewer of the evaluation report per ``evaluate.viewer`` (None: when NiiVue is installed),
    with ``qc`` (else the ``qc`` records of ``predictions/predictions.json``, if any).

    Raises:
        ConfigError: ``evaluate.viewer=true`` without NiiVue, or a bound that is not positive.
    """
    bounds = viewer_bounds(ev.viewer, float(ev.viewer_case_mb), float(ev.viewer_max_mb), "evaluate.viewer")
    if bounds is None:
        return None
    return EvaluationViewer(load, files, bounds, qc if qc is not None else qc_records(predictions))
