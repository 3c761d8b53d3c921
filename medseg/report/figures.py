"""Figures for reports: orthogonal slices with reference and predicted outlines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medseg.data.io.nifti import to_ras  # noqa: E402

REF_COLOUR = "#00c853"
PRED_COLOUR = "#ff1744"


def outline_montage(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, affine: np.ndarray,
                    title: str, out: Path) -> Path:
    """Axial, coronal and sagittal slices through the tumour with outlines; saved as PNG.

    Args:
        image: ``(X, Y, Z)`` contrast to show (e.g. FLAIR), source voxel order.
        ref: reference foreground mask, same grid.
        pred: predicted foreground mask, same grid.
        affine: voxel -> RAS affine of the grid (used to show slices in radiological axes).
        title: figure title.
        out: PNG path.
    """
    stack = np.stack([image, ref.astype(np.float32), pred.astype(np.float32)], axis=-1)
    ras, ras_affine, _ = to_ras(stack, affine)
    img, r, p = ras[..., 0], ras[..., 1] > 0.5, ras[..., 2] > 0.5
    focus = r if r.any() else (p if p.any() else img != 0)
    centre = np.round(np.argwhere(focus).mean(axis=0)).astype(int) if focus.any() else np.array(img.shape) // 2
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    views = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    flat = img.shape[2] == 1  # a 2D image (radiograph): one view, first row at the top
    if flat:
        views = [("image", 2, (0, 1))]
    fig, axes = plt.subplots(1, len(views), figsize=(10.5 if not flat else 5.0, 3.8 if not flat else 5.0),
                             dpi=90, squeeze=False)
    axes = axes[0]
    nz = img[img != 0]
    vmax = float(np.percentile(nz, 99.5)) if nz.size else 1.0
    for ax, (name, axis, (a, b)) in zip(axes, views):
        sl = [slice(None)] * 3
        sl[axis] = int(centre[axis])
        aspect = spacing[b] / spacing[a]
        ax.imshow(img[tuple(sl)].T, cmap="gray", origin="upper" if flat else "lower", vmin=0, vmax=vmax,
                  aspect=aspect)
        for mask, colour, style in ((r, REF_COLOUR, "solid"), (p, PRED_COLOUR, "dashed")):
            m = mask[tuple(sl)].T.astype(float)
            if m.any() and m.min() != m.max():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=1.3, linestyles=style)
        ax.set_title(f"{name} {sl[axis]}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{title}   (green: reference, red dashed: prediction)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def boxplot(values: dict[str, list[float]], ylabel: str, out: Path) -> Path:
    """Box plot with the individual cases overlaid (one box per structure)."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
    data = [np.asarray(values[n], dtype=float) for n in names]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.7, color="#1565c0")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
