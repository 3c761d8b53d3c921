"""Figures for evaluation reports (matplotlib, Agg backend, PNG).

- :func:`outline_montage`: three orthogonal slices through the tumour, one row per contrast,
  reference (solid green) and prediction (dashed red) outlines.
- :func:`box_strip`: a box per structure with every case as a dot (or per-case differences, for
  ``compare``).
- :func:`bland_altman`: predicted vs reference volume agreement per region.
- :func:`roc_figure`: case-level ROC curve of the tumour-present call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.data.io.nifti import to_ras  # noqa: E402

REF_COLOUR = "#00c853"
PRED_COLOUR = "#ff1744"
DOT_COLOUR = "#1565c0"


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def outline_montage(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], affine: np.ndarray,
                    title: str, out: Path) -> Path:
    """Axial, coronal and sagittal slices through the tumour with outlines; saved as PNG.

    Args:
        rows: ``(caption, image, reference mask, predicted mask)`` per row, e.g. whole tumour on
            FLAIR and enhancing tumour on T1-Gd; all ``(X, Y, Z)`` on one grid in source voxel order.
        affine: voxel -> RAS affine of the grid (slices are shown in radiological axes).
        title: figure title.
        out: PNG path.
    """
    ras_rows = []
    for caption, image, ref, pred in rows:
        stack = np.stack([image, ref.astype(np.float32), pred.astype(np.float32)], axis=-1)
        ras, ras_affine, _ = to_ras(stack, affine)
        ras_rows.append((caption, ras[..., 0], ras[..., 1] > 0.5, ras[..., 2] > 0.5))
    first = ras_rows[0]
    focus = first[2] if first[2].any() else (first[3] if first[3].any() else first[1] != 0)
    centre = (np.round(np.argwhere(focus).mean(axis=0)).astype(int) if focus.any()
              else np.array(first[1].shape) // 2)
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    flat = first[1].shape[2] == 1  # a 2D image (radiograph): one view, first row at the top
    views = [("image", 2, (0, 1))] if flat else [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)),
                                                 ("sagittal", 0, (1, 2))]
    width = 4.6 if flat else 9.6
    fig, axes = plt.subplots(len(ras_rows), len(views), figsize=(width, 3.1 * len(ras_rows) + 0.5), dpi=80,
                             squeeze=False)
    for (caption, img, r, p), ax_row in zip(ras_rows, axes):
        nz = img[img != 0]
        vmax = float(np.percentile(nz, 99.5)) if nz.size else 1.0
        vmin = float(min(0.0, np.percentile(nz, 0.5))) if nz.size else 0.0
        for ax, (name, axis, (a, b)) in zip(ax_row, views):
            sl = [slice(None)] * 3
            sl[axis] = int(centre[axis])
            ax.imshow(img[tuple(sl)].T, cmap="gray", origin="upper" if flat else "lower", vmin=vmin, vmax=vmax,
                      aspect=spacing[b] / spacing[a])
            for mask, colour, style in ((r, REF_COLOUR, "solid"), (p, PRED_COLOUR, "dashed")):
                m = mask[tuple(sl)].T.astype(float)
                if m.min() != m.max():
                    ax.contour(m, levels=[0.5], colors=colour, linewidths=1.3, linestyles=style)
            ax.set_title(f"{caption} — {name} {sl[axis]}", fontsize=8)
            ax.set_axis_off()
    fig.suptitle(f"{title}   (green: reference, red dashed: prediction)", fontsize=9)
    return _save(fig, out)


def box_strip(values: Mapping[str, Sequence[float | None]], ylabel: str, out: Path,
              lower_is_better: bool = False, signed: bool = False) -> Path:
    """A box per structure with the individual cases overlaid as dots (undefined values left out).

    ``signed``: the values are differences; dots are coloured by sign (green > 0, red < 0) and
    zero is drawn.
    """
    names = list(values)
    data = [np.asarray([v for v in values[n] if v is not None], dtype=float) for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 3.4), dpi=80)
    ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [n.replace("_", " ") for n in names], rotation=20, fontsize=8,
                  ha="right")
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        colour = np.where(d > 0, "#2e7d32", np.where(d < 0, "#c62828", "#777")) if signed else DOT_COLOUR
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=12, alpha=0.8, c=colour, zorder=3)
    if signed:
        ax.axhline(0, color="#333", lw=0.8)
    ax.set_ylabel(ylabel + (" (lower is better)" if lower_is_better else ""))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def bland_altman(volumes: Mapping[str, tuple[Sequence[float], Sequence[float]]], out: Path) -> Path:
    """Bland–Altman plots of predicted vs reference volume (ml), one panel per region: the mean of
    the two volumes against their difference, with the bias and the 95% limits of agreement."""
    names = list(volumes)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names) + 0.6, 3.2), dpi=80, squeeze=False)
    for ax, name in zip(axes[0], names):
        pred, ref = (np.asarray(v, dtype=float) for v in volumes[name])
        mean, diff = (pred + ref) / 2, pred - ref
        ax.scatter(mean, diff, s=14, color=DOT_COLOUR, alpha=0.8)
        bias, sd = float(diff.mean()) if diff.size else 0.0, float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        ax.axhline(bias, color="#333", lw=1, label=f"bias {bias:+.1f} ml")
        for k in (-1.96, 1.96):
            ax.axhline(bias + k * sd, color="#999", lw=1, ls="--")
        ax.axhline(0, color="#ccc", lw=0.8)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("mean volume (ml)", fontsize=8)
        ax.set_ylabel("predicted − reference (ml)", fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    return _save(fig, out)


def roc_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[bool]]], out: Path) -> Path:
    """Case-level ROC curves, one per score (e.g. predicted volume, maximum probability)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=80)
    for label, (scores, truths) in curves.items():
        fpr, tpr = roc_points(scores, truths)
        ax.plot(fpr, tpr, marker="o", ms=3, label=label)
    ax.plot([0, 1], [0, 1], color="#bbb", ls="--", lw=1)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def roc_points(scores: Sequence[float], truths: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve points (false-positive rate, true-positive rate), thresholds at every distinct score."""
    s, y = np.asarray(scores, dtype=float), np.asarray(truths, dtype=bool)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr, tpr = [0.0], [0.0]
    for t in np.unique(s)[::-1]:
        call = s >= t
        tpr.append(float((call & y).sum()) / n_pos)
        fpr.append(float((call & ~y).sum()) / n_neg)
    if fpr[-1] != 1.0 or tpr[-1] != 1.0:
        fpr.append(1.0)
        tpr.append(1.0)
    return np.asarray(fpr), np.asarray(tpr)
