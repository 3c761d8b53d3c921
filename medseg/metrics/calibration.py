"""Calibration of voxel probabilities: expected calibration error (ECE) and reliability curves.

For each region ``r`` the predicted region probability ``p_r`` of a voxel is compared with whether
the voxel is in the reference region. Voxels are grouped into ``bins`` equal-width probability
bins; ``ECE = sum_b (n_b / N) |mean(y)_b - mean(p)_b|`` (the usual binary ECE of the region
probability). ``evaluate`` measures it over the voxels of the *tumour band* (within
``calibration.band_mm`` of the reference or the predicted tumour, model grid), so the background
far from any tumour does not dominate.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ReliabilityBins:
    """Accumulates probability/outcome pairs into equal-width bins.

    Example:
        >>> bins = ReliabilityBins(2)
        >>> bins.add(np.array([0.2, 0.2, 0.9, 0.9]), np.array([0, 1, 1, 1]))
        >>> round(bins.ece(), 3)  # bin 1: |0.5 - 0.2|, bin 2: |1.0 - 0.9|, each half the voxels
        0.2
    """

    def __init__(self, bins: int = 15) -> None:
        self.bins = int(bins)
        self.count = np.zeros(self.bins, dtype=np.int64)
        self.sum_p = np.zeros(self.bins)
        self.sum_y = np.zeros(self.bins)

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        """Add voxels: probabilities ``p`` in [0, 1] and outcomes ``y`` (0/1 or bool), same shape."""
        p = np.asarray(p, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        idx = np.clip((p * self.bins).astype(np.int64), 0, self.bins - 1)
        self.count += np.bincount(idx, minlength=self.bins)
        self.sum_p += np.bincount(idx, weights=p, minlength=self.bins)
        self.sum_y += np.bincount(idx, weights=y, minlength=self.bins)

    @property
    def n(self) -> int:
        """Voxels added."""
        return int(self.count.sum())

    def ece(self) -> float | None:
        """Expected calibration error (``None`` without voxels)."""
        if self.n == 0:
            return None
        used = self.count > 0
        gap = np.abs(self.sum_y[used] / self.count[used] - self.sum_p[used] / self.count[used])
        return float((self.count[used] / self.n * gap).sum())

    def to_json(self) -> dict[str, Any]:
        """ECE and the reliability curve: per non-empty bin, mean probability, observed frequency, count."""
        used = self.count > 0
        return {"ece": self.ece(), "n_voxels": self.n, "bins": self.bins,
                "confidence": (self.sum_p[used] / self.count[used]).tolist(),
                "frequency": (self.sum_y[used] / self.count[used]).tolist(), "count": self.count[used].tolist()}
