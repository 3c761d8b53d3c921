"""Temperature scaling of the predictive probabilities, fitted on the validation cases.

What the temperature acts on: the predictor's final probabilities ``p`` (sliding-window stitched,
averaged over the test-time flips and the ensemble members), through their logits:

- label-wise (softmax) models: ``p_T = softmax(log p / T)``, one temperature shared by every class
  (``log p`` is the stitched logit up to a per-voxel constant, which softmax ignores);
- region-wise (sigmoid) models: ``p_T,r = sigmoid(logit(p_r) / T_r)``, one temperature per region.

Any ``T > 0`` keeps every label (the argmax and the 0.5 threshold are unchanged), so Dice and the
export parity checks are untouched; only the probabilities (uncertainty maps, QC) change. The
temperature is recorded in the artifact's ``metadata.json`` (``calibration``) and applied by
:class:`~medseg.inference.predictor.CasePredictor` for every backend (TorchScript, ONNX Runtime)
and by the MONAI bundle's ``inference.json``.

Fitting (:func:`fit_temperature`) minimises the negative log-likelihood of the reference labels
over voxels of the validation cases inside the *tumour band* (:func:`tumour_band`: voxels within
``band_mm`` of the reference or of the predicted tumour, on the model grid), so that the easy
background far from any tumour does not dominate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

EPS = 1e-6
#: Search range of the temperature (log-uniform).
T_RANGE = (0.05, 20.0)


def logits_of(probs: torch.Tensor, activation: str) -> torch.Tensor:
    """The logits behind ``(K, ...)`` probabilities: ``log p`` (softmax, up to a constant per voxel)
    or ``log(p / (1 - p))`` (sigmoid)."""
    p = probs.float().clamp(EPS, 1.0 - EPS)
    return p.log() if activation == "softmax" else p.log() - (1.0 - p).log()


def apply_temperature(probs: torch.Tensor, temperature: Sequence[float], activation: str) -> torch.Tensor:
    """Temperature-scaled ``(K, ...)`` probabilities (see the module docstring); ``temperature`` has
    one value per output channel."""
    t = torch.as_tensor([float(v) for v in temperature], dtype=torch.float32)
    if torch.all(t == 1.0):
        return probs
    z = logits_of(probs, activation) / t.view(-1, *([1] * (probs.ndim - 1)))
    return torch.softmax(z, dim=0) if activation == "softmax" else torch.sigmoid(z)


def tumour_band(masks: Sequence[np.ndarray], spacing: Sequence[float], band_mm: float) -> np.ndarray:
    """Voxels within ``band_mm`` (Euclidean, voxel spacing in mm honoured) of any voxel of the
    ``masks`` (e.g. the reference and the predicted tumour); empty when every mask is empty."""
    from scipy import ndimage

    union = np.zeros(masks[0].shape, dtype=bool)
    for m in masks:
        union |= m.astype(bool)
    if not union.any():
        return union
    return ndimage.distance_transform_edt(~union, sampling=[float(s) for s in spacing]) <= float(band_mm)


def _nll_softmax(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    s = s - s.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))


def _nll_sigmoid(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def _best_t(nll: Any) -> float:
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    res = minimize_scalar(lambda u: nll(float(np.exp(u))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, activation: str) -> dict[str, Any]:
    """Temperature(s) minimising the negative log-likelihood of ``targets``.

    Args:
        logits: ``(N, K)`` voxel logits (see :func:`logits_of`).
        targets: softmax: ``(N,)`` class indices; sigmoid: ``(N, K)`` 0/1 region memberships.
        activation: ``softmax`` (one temperature for all K channels) or ``sigmoid`` (one per channel).

    Returns:
        ``temperature`` (one value per channel), ``nll_before`` and ``nll_after`` (mean per voxel;
        per channel for sigmoid), ``n_voxels``.

    Raises:
        ValueError: no voxel to fit on.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"fit_temperature needs (N, K) logits with N > 0, got shape {z.shape}")
    if activation == "softmax":
        y = np.asarray(targets, dtype=np.int64)
        t = _best_t(lambda t: _nll_softmax(z, y, t))
        return {"temperature": [t] * z.shape[1], "nll_before": _nll_softmax(z, y, 1.0),
                "nll_after": _nll_softmax(z, y, t), "n_voxels": int(len(z))}
    y = np.asarray(targets, dtype=np.float64)
    ts = [_best_t(lambda t, k=k: _nll_sigmoid(z[:, k], y[:, k], t)) for k in range(z.shape[1])]
    return {"temperature": ts, "nll_before": [_nll_sigmoid(z[:, k], y[:, k], 1.0) for k in range(z.shape[1])],
            "nll_after": [_nll_sigmoid(z[:, k], y[:, k], t) for k, t in enumerate(ts)], "n_voxels": int(len(z))}


@dataclass
class CalibrationSamples:
    """Voxel logits and targets collected inside the tumour band of each case, for
    :func:`fit_temperature`; at most ``per_case`` voxels per case (a seeded random subset).

    Args:
        activation: ``softmax`` or ``sigmoid``.
        regions: the region codes (sigmoid targets: region memberships of the label).
        band_mm: width of the tumour band (mm).
        per_case: voxel cap per case.
    """

    activation: str
    regions: Mapping[str, Sequence[int]]
    band_mm: float
    per_case: int
    seed: int = 0
    logits: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)

    def add(self, probs: torch.Tensor, label: np.ndarray, spacing: Sequence[float], decoded: np.ndarray) -> int:
        """Add one case: uncalibrated ``(K, *grid)`` probabilities, the reference ``label`` and the
        ``decoded`` prediction on the same grid (internal codes); returns the voxels kept."""
        band = tumour_band([label > 0, decoded > 0], spacing, self.band_mm)
        idx = np.flatnonzero(band)
        if idx.size > self.per_case:
            idx = np.sort(np.random.default_rng(self.seed + len(self.logits)).choice(idx, self.per_case, replace=False))
        z = logits_of(probs, self.activation).reshape(probs.shape[0], -1)[:, torch.from_numpy(idx)].T.numpy()
        flat = label.reshape(-1)[idx]
        if self.activation == "softmax":
            y = flat.astype(np.int64)
        else:
            y = np.stack([np.isin(flat, list(codes)) for codes in self.regions.values()], axis=1).astype(np.float32)
        self.logits.append(z)
        self.targets.append(y)
        return int(idx.size)

    def fit(self) -> dict[str, Any]:
        """:func:`fit_temperature` over every voxel collected; ``temperature`` ``None`` (no scaling)
        when no case had a tumour band."""
        if sum(len(z) for z in self.logits) == 0:
            return {"temperature": None, "nll_before": None, "nll_after": None, "n_voxels": 0}
        return fit_temperature(np.concatenate(self.logits), np.concatenate(self.targets), self.activation)


def band_samples(probs: torch.Tensor, temperature: Sequence[float] | None, target: Any, label: np.ndarray,
                 spacing: Sequence[float], band_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region probabilities before and after temperature scaling and the reference memberships of
    the voxels in a case's tumour band, each ``(R, N)``: what the calibration error is measured on.

    Args:
        probs: the case's uncalibrated ``(K, *grid)`` probabilities.
        temperature: the fitted temperature (``None``: after = before).
        target: the model's :class:`~medseg.inference.targets.Target`.
        label: the reference on the same grid (internal codes).
        spacing: voxel spacing of the grid (mm).
        band_mm: width of the tumour band (mm).
    """
    from medseg.inference.uncertainty import region_probabilities

    band = torch.from_numpy(tumour_band([label > 0, target.decode(probs) > 0], spacing, band_mm).ravel())
    after = apply_temperature(probs, temperature, target.activation) if temperature else probs
    p0, p1 = (region_probabilities(p, target).reshape(len(target.labels.regions), -1)[:, band].numpy()
              for p in (probs, after))
    flat = label.ravel()[band.numpy()]
    y = np.stack([np.isin(flat, list(codes)) for codes in target.labels.regions.values()])
    return p0, p1, y
