"""Dataset fingerprint (``fingerprint.json`` of ``prepare``): spacing and shape distribution along
R, A, S (mm, voxels), per-channel intensity statistics and label frequencies."""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.data.labels import LabelSpec


def fingerprint(metas: list[dict[str, Any]], channels: tuple[str, ...], labels: LabelSpec) -> dict[str, Any]:
    """Dataset fingerprint: spacing and shape distribution, intensities, label frequencies.

    Args:
        metas: one dict per case with ``stats`` (see :func:`medseg.data.verify.case_stats`).
        channels: channel names in input order.
        labels: the dataset's labels.
    """
    spacings = np.asarray([m["stats"]["spacing"] for m in metas])
    shapes = np.asarray([m["stats"]["shape"] for m in metas])
    listed = [m["stats"]["label_counts"] for m in metas if m["stats"]["label_counts"]]
    width = max([labels.num_classes, *map(len, listed)])  # cases without the highest label count fewer
    counts = np.asarray([list(c) + [0] * (width - len(c)) for c in listed])
    total = counts.sum(axis=0) if counts.size else np.zeros(width)
    return {
        "n_cases": len(metas),
        "n_labelled": int(len(counts)),
        "n_tumour_free": int((counts[:, 1:].sum(axis=1) == 0).sum()) if counts.size else 0,
        "spacing_mm": _distribution(spacings),
        "shape": _distribution(shapes),
        "intensity": _intensities(metas, channels),
        "label_fraction": {labels.labels[i]: float(total[i] / max(total.sum(), 1))
                           for i in range(len(total)) if i in labels.labels},
    }


def _distribution(values: np.ndarray) -> dict[str, list[float]]:
    """Median, minimum and maximum per axis of ``(n_cases, 3)`` values."""
    return {"median": np.median(values, axis=0).tolist(), "min": values.min(axis=0).tolist(),
            "max": values.max(axis=0).tolist()}


def _intensities(metas: list[dict[str, Any]], channels: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Mean of the per-case intensity statistics, per channel, over non-zero and foreground voxels,
    and (``nonzero_spread``) the between-case standard deviation of each non-zero statistic."""
    chans = {}
    for c, name in enumerate(channels):
        per = [m["stats"]["channels"][c] for m in metas]
        chans[name] = {kind: _mean_stats([p[kind] for p in per if p[kind]]) for kind in ("nonzero", "foreground")}
        chans[name]["nonzero_spread"] = _spread_stats([p["nonzero"] for p in per if p["nonzero"]])
    return chans


def _spread_stats(items: list[dict[str, float]]) -> dict[str, float] | None:
    """Sample standard deviation over cases of each statistic (``None`` for fewer than two cases)."""
    if len(items) < 2:
        return None
    return {k: float(np.std([i[k] for i in items], ddof=1)) for k in items[0]}


def _mean_stats(items: list[dict[str, float]]) -> dict[str, float] | None:
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}
