"""An offline, interactive NIfTI viewer in one HTML file (NiiVue, WebGL).

Both the evaluation report (``report.html``) and a batch's review page (``review.html``) embed it;
this module holds what they share, free of any medseg room so that the Hydra-free batch runtime can
use it too.

**The library.** NiiVue's UMD build (``dist/niivue.umd.js`` of the ``@niivue/niivue`` npm package),
found at ``$MEDSEG_NIIVUE_JS`` or where ``make viewer`` installs it into the environment
(``<sys.prefix>/share/medseg-viewer/node_modules/@niivue/niivue``); it is never part of the
repository and is inlined into each page (about 2.3 MB) so that the page opens offline.

**Per case** (:func:`encode_case`):

- the display contrasts — FLAIR and T1-Gd when the channel names show them, else the first
  channel — cropped to the head (the bounding box of the voxels where some channel's magnitude
  exceeds 5% of its 99th percentile, grown to hold the tumour, plus a 2-voxel margin), windowed to the
  0.5–99.5th percentiles inside that box and stored as uint8;
- the predicted and (evaluation) reference regions, each one uint8 map whose value is the index
  (from 1) of the innermost region holding the voxel (the last listed region that contains it), shown
  with one colour per region (two palettes: prediction, reference);
- the uncertainty map when there is one, as uint8 over ``[0, its maximum]`` with the scale in the
  header (``scl_slope``), so the viewer reads back the map's own unit;
- all on one grid: the crop, sampled every ``stride`` voxels along each axis (nearest voxel, the
  affine scaled to match), ``stride`` the smallest integer that brings the case's gzip-compressed,
  base64-encoded volumes within the per-case bound.

Cases are embedded in list order until the next one would pass the total bound; that one and the
rest stay in the list, marked "not embedded". Sizes (:class:`ViewerStats`) count the base64 text in the page.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.errors import ConfigError, MedsegError

log = logging.getLogger(__name__)

NIIVUE_ENV = "MEDSEG_NIIVUE_JS"
NIIVUE_PACKAGE = Path("share") / "medseg-viewer" / "node_modules" / "@niivue" / "niivue"
MB = 1_000_000

#: The contrasts shown, in order (channel-name patterns); the first channel when none matches.
DISPLAY_CONTRASTS = (re.compile(r"flair|t2f", re.I), re.compile(r"t1.?gd|t1.?ce|t1c|gad|contrast", re.I))
#: Region colours (RGB) of the prediction and of the reference, cycled past their length.
PREDICTION_COLOURS = ((0, 200, 0), (230, 30, 30), (255, 220, 0), (255, 120, 0), (160, 90, 255))
REFERENCE_COLOURS = ((0, 200, 230), (40, 80, 255), (230, 0, 230), (0, 120, 120), (120, 120, 255))

STATUS_JS = """window.medsegViewer = {ready: false, errors: []};
(function (s) {
  var original = console.error;
  console.error = function () { s.errors.push(Array.from(arguments).map(String).join(' '));
                                return original.apply(console, arguments); };
  window.addEventListener('error', function (e) { s.errors.push(String(e.message)); });
  window.addEventListener('unhandledrejection', function (e) { s.errors.push(String(e.reason)); });
})(window.medsegViewer);"""

CSS = """
#medseg-viewer { display: flex; gap: 1rem; align-items: flex-start; flex-wrap: wrap; }
#medseg-viewer .cases { max-height: 40rem; overflow: auto; flex: 1 1 22rem; }
#medseg-viewer .view { flex: 2 1 36rem; }
#medseg-viewer .canvas-box { width: 100%; height: 36rem; background: #000; }
#medseg-case-list td { max-width: 16rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#medseg-case-list tbody tr { cursor: pointer; } #medseg-case-list tr.current td { background: #dbeafe; }
#medseg-case-list tr.not-embedded td { color: #8c959f; cursor: default; }
#medseg-viewer .controls { display: flex; flex-wrap: wrap; gap: 0.4rem 1rem; font-size: 0.85rem; margin: 0.4rem 0; }
#medseg-viewer .swatch { display: inline-block; width: 0.8rem; height: 0.8rem; margin: 0 0.15rem; }
#medseg-viewer input.slice { width: 9rem; }
#medseg-location { font-size: 0.78rem; color: #57606a; min-height: 1rem; }
"""

MARKUP = """<div id="medseg-viewer">
<div class="cases"><table id="medseg-case-list" class="compact"></table></div>
<div class="view">
<div class="controls"><span id="medseg-layers" class="controls"></span>
<label>view <select id="medseg-plane"><option>multiplanar</option><option>axial</option>
<option>coronal</option><option>sagittal</option></select></label>
<span>contrast <span id="medseg-contrast"></span></span></div>
<div class="controls"><label>x <input class="slice" type="range" min="0" value="0"></label>
<label>y <input class="slice" type="range" min="0" value="0"></label>
<label>z <input class="slice" type="range" min="0" value="0"></label></div>
<div class="canvas-box"><canvas id="medseg-canvas"></canvas></div><div id="medseg-location"></div>
</div></div>"""


@dataclass
class CaseVolumes:
    """What the viewer shows of one case, all on one grid (voxel axes ``X, Y, Z``).

    Args:
        image: ``(C, X, Y, Z)`` intensities.
        channels: the ``C`` channel names.
        affine: voxel -> world (mm) of the grid.
        prediction: region map (:func:`region_map`) of the prediction.
        reference: region map of the reference, if any.
        uncertainty: a voxel-wise uncertainty map (e.g. entropy in nats), if any.
    """

    image: np.ndarray
    channels: Sequence[str]
    affine: np.ndarray
    prediction: np.ndarray
    reference: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


@dataclass
class ViewerCase:
    """One row of the case list: the name, its cells (one per column) and a loader of its volumes."""

    name: str
    cells: Sequence[str]
    load: Callable[[], CaseVolumes]


@dataclass
class ViewerBounds:
    """Size bounds of the embedded volumes, in MB (10^6 bytes of base64 text): per case and in total."""

    case_mb: float
    max_mb: float


@dataclass
class ViewerStats:
    """Sizes of what a page embeds (MB = 10^6 bytes of base64 text)."""

    n_cases: int = 0
    n_embedded: int = 0
    total_mb: float = 0.0
    largest_case_mb: float = 0.0
    library_mb: float = 0.0
    case_mb_bound: float = 0.0
    max_mb_bound: float = 0.0
    niivue: str = ""
    not_embedded: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        """The sizes in words, for the page and the log."""
        text = (f"{self.n_embedded} of {self.n_cases} case(s) embedded, {self.total_mb:.2f} MB of volumes "
                f"(largest case {self.largest_case_mb:.2f} MB; bounds: {self.case_mb_bound:g} MB per case, "
                f"{self.max_mb_bound:g} MB in total) plus NiiVue {self.niivue} ({self.library_mb:.2f} MB)")
        if self.not_embedded:
            text += "; listed but not embedded (total bound): " + ", ".join(self.not_embedded)
        return text + "."


def niivue_script() -> Path | None:
    """The NiiVue UMD build: ``$MEDSEG_NIIVUE_JS``, else the one ``make viewer`` installed; None if neither."""
    env = os.environ.get(NIIVUE_ENV)
    path = Path(env) if env else Path(sys.prefix) / NIIVUE_PACKAGE / "dist" / "niivue.umd.js"
    return path if path.is_file() else None


def niivue_version(script: Path) -> str:
    """The version in the ``package.json`` beside the build's ``dist/`` folder (``unknown`` without one)."""
    try:
        return str(json.loads((script.parent.parent / "package.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def want_viewer(flag: bool | None, key: str) -> bool:
    """Whether to embed the viewer: ``flag`` ``None`` means when NiiVue is installed.

    Raises:
        ConfigError: ``flag`` is true but NiiVue is not installed (the message names ``key``).
    """
    found = niivue_script() is not None
    if flag and not found:
        raise ConfigError(f"{key}=true needs NiiVue: run `make viewer` (npm) or set {NIIVUE_ENV} to "
                                "niivue.umd.js of the @niivue/niivue package")
    if flag is None and not found:
        log.info("%s unset and NiiVue is not installed (make viewer): no interactive viewer", key)
    return found if flag is None else bool(flag)


def viewer_bounds(flag: bool | None, case_mb: float, max_mb: float, key: str) -> ViewerBounds | None:
    """The size bounds when the viewer is wanted (:func:`want_viewer`), else None.

    Raises:
        ConfigError: ``flag`` is true but NiiVue is not installed, or a bound is not positive.
    """
    if case_mb <= 0 or max_mb <= 0:
        raise ConfigError(f"{key}: the viewer size bounds must be positive, got {case_mb:g} MB per case "
                          f"and {max_mb:g} MB in total")
    return ViewerBounds(case_mb, max_mb) if want_viewer(flag, key) else None


def qc_cells(qc: Mapping[str, Any] | None) -> list[str]:
    """The QC columns of a case-list row: the score, and the review flag with its reasons."""
    if not qc:
        return ["–", "–"]
    score, reasons = qc.get("score"), "; ".join(map(str, qc.get("reasons") or []))
    flag = ("yes" if qc.get("review") else "no") if "review" in qc else "–"
    return ["–" if score is None else f"{float(score):.3f}", flag + (f": {reasons}" if reasons else "")]


def region_map(label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """uint8 map: per voxel the index (from 1) of the last listed region whose codes hold its label."""
    out = np.zeros(label.shape, dtype=np.uint8)
    for i, codes in enumerate(regions.values(), start=1):
        out[np.isin(label, list(codes))] = i
    return out


def uncertainty_path(prediction: Path) -> Path:
    """Where the uncertainty map of a prediction ``<case>.nii.gz`` lies: ``<case>_uncertainty.nii.gz``."""
    return prediction.with_name(prediction.name.removesuffix(".gz").removesuffix(".nii") + "_uncertainty.nii.gz")


def read_uncertainty(prediction: Path | None, shape: Sequence[int]) -> np.ndarray | None:
    """The uncertainty map beside ``prediction`` when there is one on the prediction's grid (``shape``);
    None without one, or (with a warning) when it is unreadable or on another grid."""
    path = None if prediction is None else uncertainty_path(prediction)
    if path is None or not path.is_file():
        return None
    try:
        img = nib.load(path)
        if tuple(img.shape) != tuple(shape):
            raise ValueError(f"shape {tuple(img.shape)}, not the prediction's {tuple(shape)}")
        return np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as e:
        log.warning("viewer: %s not shown (%s)", path, e)
        return None


def display_channels(channels: Sequence[str]) -> list[int]:
    """Indices of the contrasts shown: FLAIR, then T1-Gd (those present), else the first channel."""
    picks = [next((i for i, c in enumerate(channels) if p.search(c)), None) for p in DISPLAY_CONTRASTS]
    found = list(dict.fromkeys(i for i in picks if i is not None))
    return found or [0]


def head_box(vol: CaseVolumes, margin: int = 2) -> tuple[slice, ...]:
    """The crop: voxels where some channel's magnitude exceeds 5% of its 99th percentile, plus the
    predicted and reference tumour, grown by ``margin`` voxels."""
    mags = np.abs(vol.image)
    ref = np.percentile(mags.reshape(len(mags), -1), 99, axis=1)
    mask = (mags > 0.05 * ref[:, None, None, None]).any(axis=0) | (vol.prediction > 0)
    if vol.reference is not None:
        mask |= vol.reference > 0
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape))


def _nifti_b64(data: np.ndarray, affine: np.ndarray, slope: float = 1.0) -> str:
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_slope_inter(slope, 0.0)
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)).decode("ascii")


def _window(channel: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(channel, [0.5, 99.5])
    scaled = (channel.astype(np.float32) - lo) / max(float(hi - lo), 1e-6)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _encode_at(vol: CaseVolumes, box: tuple[slice, ...], stride: int) -> dict[str, Any]:
    """The case's volumes cropped to ``box`` and sampled every ``stride`` voxels, encoded."""
    grid = tuple(slice(s.start, s.stop, stride) for s in box)
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ np.array([s.start for s in box]) + vol.affine[:3, 3]
    affine[:3, :3] = vol.affine[:3, :3] * stride
    out: dict[str, Any] = {"stride": stride, "contrasts": {
        vol.channels[k] if k < len(vol.channels) else f"channel {k}": _nifti_b64(_window(vol.image[k][box])[
            ::stride, ::stride, ::stride], affine) for k in display_channels(vol.channels)}}
    out["prediction"] = _nifti_b64(vol.prediction[grid], affine)
    out["reference"] = None if vol.reference is None else _nifti_b64(vol.reference[grid], affine)
    out["uncertainty"], out["uncertainty_max"] = None, 0.0
    if vol.uncertainty is not None:
        top = float(np.nanmax(vol.uncertainty)) if vol.uncertainty.size else 0.0
        scale = top / 255 if top > 0 else 1.0
        codes = np.round(np.nan_to_num(vol.uncertainty[grid]) / scale).clip(0, 255).astype(np.uint8)
        out["uncertainty"], out["uncertainty_max"] = _nifti_b64(codes, affine, scale), top
    tumour = vol.prediction[grid] > 0
    if not tumour.any() and vol.reference is not None:
        tumour = vol.reference[grid] > 0
    shape = tumour.shape
    out["focus"] = ([int(round(float(i.mean()))) for i in np.nonzero(tumour)] if tumour.any()
                    else [n // 2 for n in shape])
    return out


def case_size(encoded: Mapping[str, Any]) -> int:
    """Bytes of base64 text one encoded case adds to the page."""
    return sum(len(v) for v in encoded["contrasts"].values()) + sum(
        len(encoded[k]) for k in ("prediction", "reference", "uncertainty") if encoded[k])


def encode_case(vol: CaseVolumes, max_bytes: float) -> dict[str, Any]:
    """Encode one case within ``max_bytes`` (see the module docstring): the smallest stride that fits.

    Raises:
        ValueError: the volumes do not share one ``(X, Y, Z)`` grid, or a stride of 16 is still too big.
    """
    shapes = {vol.image.shape[1:], vol.prediction.shape}
    shapes |= {v.shape for v in (vol.reference, vol.uncertainty) if v is not None}
    if len(shapes) != 1:
        raise ValueError(f"the image, prediction, reference and uncertainty grids differ: {sorted(shapes)}")
    box = head_box(vol)
    voxels = math.prod(s.stop - s.start for s in box)
    n_maps = len(display_channels(vol.channels)) + 1 + sum(v is not None for v in (vol.reference, vol.uncertainty))
    stride = max(1, int((voxels * n_maps * 0.5 / max(max_bytes, 1)) ** (1 / 3)))  # ~0.5 B/voxel as b64 gzip
    while stride <= 16:
        encoded = _encode_at(vol, box, stride)
        if case_size(encoded) <= max_bytes:
            return encoded
        stride += 1
    raise ValueError(f"still over {max_bytes / MB:g} MB at a sampling stride of 16")


def encode_cases(cases: Sequence[ViewerCase], bounds: ViewerBounds) -> tuple[list[dict[str, Any]], ViewerStats]:
    """Encode the cases in order within the bounds; a case that cannot be loaded or encoded is
    listed with the reason instead of its volumes."""
    case_mb, max_mb = bounds.case_mb, bounds.max_mb
    stats = ViewerStats(n_cases=len(cases), case_mb_bound=case_mb, max_mb_bound=max_mb)
    out, total, full = [], 0, False
    for case in cases:
        row: dict[str, Any] = {"name": case.name, "cells": [str(c) for c in case.cells], "embedded": False}
        out.append(row)
        try:
            encoded = None if full else encode_case(case.load(), case_mb * MB)
        except (OSError, ValueError, MedsegError) as e:
            log.warning("viewer: %s not embedded (%s)", case.name, e)
            row["note"] = f"not embedded: {e}"
            stats.not_embedded.append(case.name)
            continue
        size = 0 if encoded is None else case_size(encoded)
        if encoded is None or total + size > max_mb * MB:  # the bound is reached: list the rest only
            full = True
            row["note"] = f"not embedded: the page's {max_mb:g} MB bound is reached"
            stats.not_embedded.append(case.name)
            continue
        total += size
        stats.largest_case_mb = max(stats.largest_case_mb, size / MB)
        row.update(encoded, embedded=True, note=f"{size / MB:.2f} MB, every {encoded['stride']} voxel(s)")
    stats.n_embedded = sum(r["embedded"] for r in out)
    stats.total_mb = total / MB
    return out, stats


def viewer_html(cases: Sequence[ViewerCase], columns: Sequence[str], regions: Sequence[str],
                bounds: ViewerBounds) -> tuple[str, ViewerStats]:
    """The viewer as an HTML fragment (markup, style, NiiVue, the data, the app) and its sizes.

    Raises:
        ConfigError: NiiVue is not installed (``make viewer``).
    """
    script = niivue_script()
    if script is None:
        raise ConfigError(f"NiiVue is not installed: run `make viewer` or set {NIIVUE_ENV}")
    encoded, stats = encode_cases(cases, bounds)
    library = script.read_text(encoding="utf-8")
    stats.library_mb, stats.niivue = len(library.encode()) / MB, niivue_version(script)
    data = {"columns": list(columns), "cases": encoded, "regions": [
        {"name": r, "colour": PREDICTION_COLOURS[i % len(PREDICTION_COLOURS)],
         "reference_colour": REFERENCE_COLOURS[i % len(REFERENCE_COLOURS)]} for i, r in enumerate(regions)]}
    payload = json.dumps(data).replace("<", "\\u003c")
    app = (Path(__file__).with_name("niivue_app.js")).read_text(encoding="utf-8")
    fragment = (f"<style>{CSS}</style>{MARKUP}<script>{STATUS_JS}</script>\n<script>{library}</script>\n"
                f'<script type="application/json" id="medseg-viewer-data">{payload}</script>\n<script>{app}</script>')
    return fragment, stats


def standalone_page(title: str, intro: Sequence[str], fragment: str) -> str:
    """A whole HTML page around a viewer fragment (the batch review page)."""
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in intro)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<style>body { font-family: system-ui, sans-serif; margin: 1rem; color: #1f2328; } '
            'table { border-collapse: collapse; font-size: 0.8rem; } '
            'th, td { border: 1px solid #d0d7de; padding: 0.2rem 0.4rem; text-align: right; } '
            'th:first-child, td:first-child { text-align: left; }</style></head><body>\n'
            f"<h1>{html.escape(title)}</h1>{paragraphs}\n{fragment}\n</body></html>\n")
