"""Voxel-wise uncertainty maps and per-region uncertainty summaries.

The uncertainty map (``<case>_uncertainty.nii.gz``, float32, on the input grid) is the **predictive
entropy in bits** of the distribution the label map is decoded from: the calibrated probabilities
(:mod:`medseg.inference.calibration`), averaged over the test-time flips and the ensemble members,
resampled (trilinear) onto the input grid.

- label-wise (softmax) models: ``H = -sum_k p_k log2 p_k`` over the K classes (0 to log2 K bits);
- region-wise (sigmoid) models: ``H = sum_r h(p_r)``, ``h(p) = -p log2 p - (1-p) log2 (1-p)``, the
  entropy of the R independent region outputs the model predicts (0 to R bits).

Voxels outside the cropped head are 0. Per region ``r`` (``p_r``: the region's probability; for
label-wise models the sum of its classes' probabilities), :class:`CaseUncertainty` summarises, with
volumes in ml on the input grid:

- ``volume_ml``: the predicted volume (the label map written);
- ``volume_p25_ml`` / ``volume_p75_ml``: the volume with ``p_r > 0.25`` / ``p_r > 0.75``, and
  ``volume_range_ml``, their difference: how much the volume depends on the threshold;
- ``uncertain_ml``: the volume whose binary entropy ``h(p_r)`` exceeds 0.5 bit (0.11 < p_r < 0.89);
- ``mean_entropy_bits``: the mean of the uncertainty map inside the predicted region (0 if empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medseg.data.preprocess import Geometry, to_source_grid
from medseg.inference.targets import Target

#: Probability thresholds of the volume range.
RANGE_THRESHOLDS = (0.25, 0.75)
#: A voxel is uncertain for a region when the region's binary entropy exceeds this (bits).
UNCERTAIN_BITS = 0.5
DEFINITION = ("predictive entropy in bits of the calibrated, flip- and ensemble-averaged probabilities: "
              "softmax models -sum_k p_k log2 p_k; sigmoid models sum over regions of the binary entropy")
_EPS = 1e-7


def region_probabilities(probs: torch.Tensor, target: Target) -> torch.Tensor:
    """``(R, ...)`` probability of each region: its channel (regions), or the sum of its classes'
    probabilities (labels)."""
    if target.mode == "regions":
        return probs
    return torch.stack([probs[list(codes)].sum(dim=0) for codes in target.labels.regions.values()])


def binary_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """``h(p) = -p log2 p - (1-p) log2 (1-p)`` (bits), elementwise."""
    p = p.float().clamp(_EPS, 1.0 - _EPS)
    return -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())


def entropy_bits(probs: torch.Tensor, activation: str) -> torch.Tensor:
    """Voxel-wise predictive entropy (bits) of ``(K, ...)`` probabilities (module docstring)."""
    if activation == "sigmoid":
        return binary_entropy_bits(probs).sum(dim=0)
    p = probs.float().clamp_min(_EPS)
    return (-(probs.float() * p.log2()).sum(dim=0)).clamp_min(0.0)


@dataclass
class CaseUncertainty:
    """The uncertainty of one case: the entropy ``map`` (bits, ``(X, Y, Z)`` float32 on the input
    grid) and the per-region summaries (module docstring)."""

    map: np.ndarray
    regions: dict[str, dict[str, float]]

    def to_json(self) -> dict[str, Any]:
        """The summaries for ``predictions.json`` (the map is written as NIfTI)."""
        return {"definition": DEFINITION, "units": "bits; volumes in ml", "max_bits": float(self.map.max()),
                "regions": self.regions}


class UncertaintyDecoder:
    """A decode function for :func:`medseg.data.preprocess.restore` that also keeps the entropy
    and the region volumes of the probabilities on the cropped input-resolution grid; call
    :meth:`finish` with the final label map to get the :class:`CaseUncertainty`.

    Args:
        target: the model's output.
        voxel_ml: volume of one input voxel (ml).
    """

    def __init__(self, target: Target, voxel_ml: float) -> None:
        self.target = target
        self.voxel_ml = float(voxel_ml)
        self.entropy: np.ndarray | None = None
        self.volumes: dict[str, dict[str, float]] = {}

    def __call__(self, probs: torch.Tensor) -> np.ndarray:
        label = self.target.decode(probs)
        self.entropy = entropy_bits(probs, self.target.activation).numpy().astype(np.float32)
        lo, hi = RANGE_THRESHOLDS
        for name, p in zip(self.target.labels.regions, region_probabilities(probs, self.target)):
            v_lo, v_hi = float((p > lo).sum()) * self.voxel_ml, float((p > hi).sum()) * self.voxel_ml
            self.volumes[name] = {"volume_p25_ml": v_lo, "volume_p75_ml": v_hi, "volume_range_ml": v_lo - v_hi,
                                  "uncertain_ml": float((binary_entropy_bits(p) > UNCERTAIN_BITS).sum()) * self.voxel_ml}
        return label

    def finish(self, label: np.ndarray, geom: Geometry) -> CaseUncertainty:
        """The case's uncertainty, given its final label map on the input grid."""
        if self.entropy is None:
            raise RuntimeError("UncertaintyDecoder.finish called before decoding")
        emap = to_source_grid(self.entropy, geom)
        regions = {}
        for name, codes in self.target.labels.regions.items():
            mask = np.isin(label, list(codes))
            regions[name] = {"volume_ml": float(mask.sum()) * self.voxel_ml, **self.volumes[name],
                             "mean_entropy_bits": float(emap[mask].mean()) if mask.any() else 0.0}
        return CaseUncertainty(map=emap, regions=regions)


def voxel_ml(affine: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Volume of one voxel of the grid ``affine`` describes (ml)."""
    return float(np.prod(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))) / 1000.0
