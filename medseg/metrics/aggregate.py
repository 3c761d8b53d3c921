"""Summaries over cases: mean, median, spread and a bootstrap confidence interval of the mean.

>>> aggregate([{"lesion": {"dice": 0.5}}, {"lesion": {"dice": 1.0}}, {"lesion": {"dice": None}}]
...           )["lesion"]["dice"]["n"]
2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Bootstrap resamples of every confidence interval.
N_BOOT = 2000


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOT, rng: np.random.Generator | int = 0) -> list[float] | None:
    """Bootstrap 95% confidence interval of the mean of ``values`` (``None`` for no values).

    Args:
        values: 1D sample.
        n_boot: resamples.
        rng: a generator (shared by a sequence of intervals) or the seed of a new one.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    means = values[gen.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    return [float(x) for x in np.percentile(means, [2.5, 97.5])]


def bootstrap_ci_crossed(values: np.ndarray, n_boot: int = N_BOOT, rng: np.random.Generator | int = 0
                         ) -> list[float] | None:
    """Bootstrap 95% confidence interval of the mean of a crossed sample: ``values[i, j]`` is one
    measurement of row ``i`` (e.g. a training seed) on column ``j`` (e.g. a test case that every
    seed is scored on). Each resample draws the rows and the columns independently, with
    replacement, and averages the chosen cells (the two-way bootstrap of Owen, Ann. Appl. Stat.
    2007), so the interval carries both sources of noise: the seeds' and the cases'. ``None`` with
    fewer than two rows (nothing to say about the rows' noise) or no columns.

    >>> bootstrap_ci_crossed(np.array([[0.25, 0.25, 0.25], [0.25, 0.25, 0.25]]))
    [0.25, 0.25]
    >>> low, high = bootstrap_ci_crossed(np.array([[0.1] * 20, [-0.1] * 20]))
    >>> low < -0.09 and high > 0.09  # the seeds disagree: an interval across zero
    True
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] == 0:
        return None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    rows = gen.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    cols = gen.integers(0, values.shape[1], size=(n_boot, values.shape[1]))
    means = values[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    return [float(x) for x in np.percentile(means, [2.5, 97.5])]


def describe(values: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Mean, median, std, IQR, bootstrap 95% CI of the mean and the count ``n`` of a sample."""
    if values.size == 0:
        return {"mean": None, "median": None, "std": None, "iqr": None, "ci95": None, "n": 0}
    q1, q3 = np.percentile(values, [25, 75])
    return {"mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std()),
            "iqr": float(q3 - q1), "ci95": bootstrap_ci(values, n_boot, rng), "n": int(values.size)}


def aggregate(per_case: Sequence[Mapping[str, Mapping[str, float | None]]], n_boot: int = N_BOOT, seed: int = 0
              ) -> dict[str, dict[str, dict[str, Any]]]:
    """Per structure and metric: :func:`describe` of the case values.

    Undefined values (``None``, e.g. sensitivity of an empty reference) are skipped and the count
    of values used is reported as ``n``. One generator seeded with ``seed`` draws every interval,
    so the result is reproducible.

    Args:
        per_case: ``{structure: {metric: value}}`` of each case (the structures of the first case
            are summarised).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for structure in per_case[0]:
        out[structure] = {}
        for metric in per_case[0][structure]:
            v = np.asarray([c[structure][metric] for c in per_case if c[structure][metric] is not None], dtype=float)
            out[structure][metric] = describe(v, rng, n_boot)
    return out
