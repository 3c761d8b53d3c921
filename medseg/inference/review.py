"""``review.html``: a batch's predictions in an offline NiiVue viewer, most suspicious case first.

Written next to ``predictions.json`` by ``medseg predict`` and ``medseg-predict`` (``predict.review``,
``--review``; by default when NiiVue is installed, ``make viewer``). Per case: the display contrasts
of the input, the predicted regions (read back from ``<case>.nii.gz`` in its label coding), the
uncertainty map ``<case>_uncertainty.nii.gz`` when it was written, and a row with the QC score,
review flag and reasons (``qc`` of the case's record), predicted volume per region, time and
status. Rows are sorted by QC score, highest first (cases without one after them, by name). See
:mod:`medseg.utils.niivue` for the viewer, the encoding and the size bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.data.io.nifti import read_nifti
from medseg.data.labels import remap_labels
from medseg.export.artifact import Artifact
from medseg.utils.files import write_text
from medseg.utils.niivue import (CaseVolumes, ViewerBounds, ViewerCase, ViewerStats, qc_cells, read_uncertainty,
                                 region_map, standalone_page, viewer_html)

if TYPE_CHECKING:  # runtime imports this module
    from medseg.inference.runtime import InputCase

log = logging.getLogger(__name__)


def _order(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def key(r: Mapping[str, Any]) -> tuple[bool, float, str]:
        score = (r.get("qc") or {}).get("score")
        return score is None, -float(score or 0.0), str(r["case"])
    return sorted(records, key=key)


def _prediction(output: Path, coding: str) -> tuple[np.ndarray, np.ndarray]:
    """The written label map in internal codes, and its affine."""
    vol = read_nifti(output, ndim=(3,))
    return remap_labels(np.asarray(vol.data), coding, str(output)), vol.affine


def review_cases(items: Sequence[InputCase], records: Sequence[Mapping[str, Any]], art: Artifact,
                 coding: str) -> tuple[list[ViewerCase], list[str]]:
    """The case list of ``review.html``: every case with a written prediction, and its columns."""
    regions = art.labels.regions
    by_name = {i.name: i for i in items}
    columns = ["case", "QC score", "review", *[f"{r} ml" for r in regions], "seconds", "status"]
    cases = []
    for r in _order([r for r in records if r["status"] != "failed" and Path(r["output"]).is_file()]):
        name, output = str(r["case"]), Path(r["output"])
        label, affine = _prediction(output, coding)
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        volumes = [f"{np.isin(label, list(codes)).sum() * voxel_ml:.2f}" for codes in regions.values()]
        seconds = r.get("seconds")
        cells = [name, *qc_cells(r.get("qc")), *volumes, "–" if seconds is None else f"{seconds:.1f}", r["status"]]
        cases.append(ViewerCase(name, cells, _loader(by_name[name], output, coding, regions, art.spec.channels)))
    return cases, columns


def _loader(item: InputCase, output: Path, coding: str, regions: Mapping[str, Sequence[int]],
            channels: Sequence[str]) -> Callable[[], CaseVolumes]:
    def load() -> CaseVolumes:
        image, affine, _ = item.load()
        label, _ = _prediction(output, coding)
        return CaseVolumes(image, list(channels), affine, region_map(label, regions),
                           uncertainty=read_uncertainty(output, label.shape))
    return load


def write_review(path: Path, items: Sequence[InputCase], records: Sequence[Mapping[str, Any]], art: Artifact,
                 coding: str, bounds: ViewerBounds) -> ViewerStats:
    """Write the review page ``path`` (``review.html``, atomically) and return what it embeds."""
    cases, columns = review_cases(items, records, art, coding)
    fragment, stats = viewer_html(cases, columns, list(art.labels.regions), bounds)
    n_flagged = sum(bool((r.get("qc") or {}).get("review")) for r in records)
    intro = [f"{len(records)} case(s) from {art.path}; {n_flagged} flagged for review. Cases are listed by QC "
             "score, most suspicious first; click one to load it. Scroll or drag in a view, or use the x/y/z "
             "sliders, to move through the slices; the checkboxes toggle the prediction, the uncertainty map "
             "and each region.",
             "Volumes are cropped to the head and sampled every n voxels to fit the size bounds "
             "(predict.viewer_case_mb, predict.viewer_max_mb): " + stats.sentence()]
    write_text(path, standalone_page("medseg review", intro, fragment))
    log.info("%s: %s", path.name, stats.sentence())
    return stats
