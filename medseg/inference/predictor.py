"""Whole-case prediction: preprocess -> sliding window -> restore onto the source grid.

Used by ``evaluate`` (with the trained network) and ``predict`` (with the exported artifact), so
both score exactly the same computation; :func:`medseg.inference.build.build_predictor` builds it
from either. Imports neither MONAI nor Hydra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.config import InferenceConfig, choice
from medseg.data.geometry import foreground_box
from medseg.data.preprocess import PreprocessSpec, preprocess, restore
from medseg.errors import DataError
from medseg.inference.calibration import apply_temperature
from medseg.inference.postprocess import EnhancingRule
from medseg.inference.sliding_window import Network, flip_sets, sliding_window_probs
from medseg.inference.targets import Target
from medseg.inference.uncertainty import CaseUncertainty, UncertaintyDecoder, voxel_ml
from medseg.models.memory import inference_window_bytes


@dataclass
class CasePrediction:
    """Result of predicting one case.

    ``label``: ``(X, Y, Z)`` uint8 on the source grid; ``max_foreground_prob``: highest
    non-background probability anywhere (a detection score); ``seconds``: wall time;
    ``uncertainty``: the entropy map and region summaries (with ``CasePredictor.uncertainty``);
    ``model_probs``: the *uncalibrated* ``(K, x, y, z)`` probabilities on the model grid (with
    ``details=True``; for fitting and measuring calibration).
    """

    label: np.ndarray
    max_foreground_prob: float
    seconds: float
    uncertainty: CaseUncertainty | None = None
    model_probs: torch.Tensor | None = None
    #: seconds per phase: ``preprocess`` (reorient, crop, resample, normalise), ``windows`` (sliding
    #: windows, network and stitching), ``restore`` (decode, resample back to the source grid),
    #: ``postprocess`` (small-component removal, uncertainty)
    timings: dict[str, float] = field(default_factory=dict)
    #: the predicted enhancing-tumour volume (ml) relabelled as tumour core by the small-enhancing
    #: rule (:mod:`medseg.inference.postprocess`); ``None`` when the rule left the case alone
    enhancing_relabelled_ml: float | None = None


class CasePredictor:
    """Predict label maps for raw cases.

    Args:
        net: network callable on ``(B, C, *patch)`` tensors returning logits, or several (an
            ensemble, e.g. the folds of a cross-validation): their probabilities are averaged.
        spec: preprocessing the network was trained with.
        patch_size: sliding-window size.
        target: what the network outputs (label-wise softmax or region-wise sigmoid).
        inference: overlap, windows per call (``sw_batch_size``), test-time flips, memory cap and
            stitching dtype; ``None``: the defaults of :class:`~medseg.config.InferenceConfig`.
            ``device``, ``threads`` and ``precision`` are the network's business (see
            :func:`~medseg.inference.build.build_predictor`).
        min_component_ml: remove connected tumour components smaller than this (ml; 0 keeps all);
            ``None``: ``inference.min_component_ml`` (``None`` there too: keep all).
        min_enhancing_ml: relabel a case's enhancing tumour as tumour core when it totals less than
            this (ml; 0: off; :mod:`medseg.inference.postprocess`); ``None``:
            ``inference.min_enhancing_ml`` (``None`` there too: off). Ignored by label sets without
            an enhancing tumour inside a tumour core.
        enhancing_source: where ``min_enhancing_ml`` came from (recorded in ``predictions.json``).
        model_cfg: the network's config (channels, strides) for the activation-memory estimate.
        temperature: one temperature per output channel, applied to the averaged probabilities
            (:mod:`medseg.inference.calibration`); ``None``: uncalibrated.
        uncertainty: also compute the entropy map and the per-region uncertainty summaries
            (:mod:`medseg.inference.uncertainty`).

    Example:
        >>> from medseg.data.labels import LabelSpec
        >>> pred = CasePredictor(lambda x: x[:, :1].repeat(1, 4, 1, 1, 1),
        ...                      PreprocessSpec(channels=("t1",), target_spacing=(1.0, 1.0, 1.0)),
        ...                      (16, 16, 16), Target("labels", LabelSpec()))
        >>> pred.overlap, pred.batch_size
        (0.5, 2)
    """

    def __init__(self, net: Network | Sequence[Network], spec: PreprocessSpec, patch_size: Sequence[int],
                 target: Target, inference: InferenceConfig | None = None, *,
                 min_component_ml: float | None = None, min_enhancing_ml: float | None = None,
                 enhancing_source: str = "set by the caller", model_cfg: Mapping[str, Any] | None = None,
                 temperature: Sequence[float] | None = None, uncertainty: bool = False) -> None:
        inference = InferenceConfig() if inference is None else inference
        self.nets = list(net) if isinstance(net, Sequence) else [net]
        self.spec = spec
        self.patch_size = tuple(int(p) for p in patch_size)
        self.target = target
        self.overlap = float(inference.overlap)
        self.batch_size = int(inference.sw_batch_size)
        self.flips = flip_sets(list(inference.tta_flips))
        if min_component_ml is None:
            min_component_ml = inference.min_component_ml
        self.min_component_ml = float(min_component_ml or 0.0)
        if min_enhancing_ml is None:
            min_enhancing_ml = inference.min_enhancing_ml
        self.enhancing_rule = EnhancingRule.for_labels(target.labels)
        # 0 where the label set has no rule, so that what is recorded is what was applied
        self.min_enhancing_ml = float(min_enhancing_ml or 0.0) if self.enhancing_rule is not None else 0.0
        self.enhancing_source = enhancing_source if self.enhancing_rule is not None else "no rule for this label set"
        self.max_memory_gb = None if inference.max_memory_gb is None else float(inference.max_memory_gb)
        self.stitch_dtype = getattr(torch, choice(inference.stitch_dtype))
        self.window_bytes = inference_window_bytes(self.patch_size, model_cfg, len(spec.channels),
                                                   target.channels, self.batch_size)
        self.temperature = None if temperature is None else [float(t) for t in temperature]
        self.uncertainty = bool(uncertainty)

    def estimate_bytes(self, image_shape: Sequence[int], affine: np.ndarray) -> int:
        """Upper estimate of the memory one case adds on top of its loaded image (bytes).

        Terms: the reoriented copy and non-zero mask of the image, the resampled image on the model
        grid (without the foreground crop, so an upper bound) with its interpolation temporaries,
        the per-class probability accumulator and normaliser, one batch of windows with its network
        activations (:func:`medseg.models.memory.inference_window_bytes`), and the probabilities
        resampled back onto the native grid with the label map.
        """
        c, native = int(image_shape[0]), int(np.prod(image_shape[1:]))
        spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        ratio = float(np.prod(spacing) / np.prod(self.spec.target_spacing))
        model = int(native * ratio) + int(np.prod(self.patch_size))
        k = int(self.target.channels)
        return (c * native * 5  # reoriented float32 copy + bool mask
                + c * model * 4 * 3  # resampled image + interpolation temporaries
                + (k + 1) * model * 4  # accumulator + normaliser
                + (k * model * 4 if len(self.nets) > 1 else 0)  # an ensemble member's probabilities (nets run in turn)
                + self.window_bytes
                + k * native * 4 * 2 + native  # probabilities on the native grid, label
                + (native * 4 * 3 if self.uncertainty else 0)  # entropy (cropped and full grid), a region's temporaries
                + (k * model * 4 if self.temperature else 0))  # calibrated copy of the probabilities

    def check_memory(self, image: np.ndarray, affine: np.ndarray, name: str) -> None:
        """Refuse a case whose estimated peak exceeds ``max_memory_gb`` before allocating anything."""
        if self.max_memory_gb is None:
            return
        need = current_rss_bytes() + self.estimate_bytes(image.shape, affine)
        if need > self.max_memory_gb * 1e9:
            raise DataError(name, f"predicting this case needs about {need / 1e9:.1f} GB (image {tuple(image.shape)}) "
                                  f"> the memory cap inference.max_memory_gb={self.max_memory_gb:g}; raise the cap or "
                                  f"lower inference.sw_batch_size")

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(K, *spatial)`` probabilities of a preprocessed ``(C, *spatial)`` image, averaged over
        the networks."""
        probs = None
        for net in self.nets:
            p = sliding_window_probs(net, image, self.patch_size, self.target.channels, overlap=self.overlap,
                                     batch_size=self.batch_size, tta_flips=self.flips,
                                     activation=self.target.activation, stitch_dtype=self.stitch_dtype)
            probs = p if probs is None else probs.add_(p)
        return probs / len(self.nets) if len(self.nets) > 1 else probs

    def calibrated(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` scaled by the predictor's temperature (unchanged without one)."""
        if self.temperature is None:
            return probs
        return apply_temperature(probs, self.temperature, self.target.activation)

    def __call__(self, image: np.ndarray, affine: np.ndarray, name: str = "<case>",
                 details: bool = False) -> CasePrediction:
        """Predict one case given its ``(C, X, Y, Z)`` image and voxel -> RAS affine; ``details``
        keeps the uncalibrated model-grid probabilities in the result."""
        start = time.perf_counter()
        marks = [start]
        self.check_memory(image, affine, name)
        pre, _, geom = preprocess(image, affine, self.spec, name=name)
        marks.append(time.perf_counter())
        raw = self.probabilities(torch.from_numpy(pre))
        probs = self.calibrated(raw)
        max_fg = self.target.foreground_score(probs)
        marks.append(time.perf_counter())
        decoder = UncertaintyDecoder(self.target, voxel_ml(affine)) if self.uncertainty else None
        label = restore(probs, geom, decoder or self.target.decode)
        marks.append(time.perf_counter())
        label, relabelled = self.postprocess(label, affine)
        uncertainty = decoder.finish(label, geom) if decoder else None
        marks.append(time.perf_counter())
        timings = dict(zip(("preprocess", "windows", "restore", "postprocess"), np.diff(marks).tolist()))
        return CasePrediction(label=label, max_foreground_prob=max_fg, seconds=marks[-1] - start,
                              uncertainty=uncertainty, model_probs=raw if details else None, timings=timings,
                              enhancing_relabelled_ml=relabelled)

    def postprocess(self, label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Small tumour components removed (``min_component_ml``), then a small enhancing tumour
        relabelled as tumour core (``min_enhancing_ml``); with the enhancing volume relabelled (ml,
        ``None`` if nothing was)."""
        spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        if self.min_component_ml > 0:
            label = remove_small_components(label, spacing, self.min_component_ml)
        if self.min_enhancing_ml <= 0 or self.enhancing_rule is None:
            return label, None
        ml = voxel_ml(affine)
        out = self.enhancing_rule.apply(label, ml, self.min_enhancing_ml)
        return out, (self.enhancing_rule.volume_ml(label, ml) if out is not label else None)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def remove_small_components(label: np.ndarray, spacing: Sequence[float], min_ml: float) -> np.ndarray:
    """Set to background every 26-connected tumour component (label > 0) smaller than ``min_ml``.

    Args:
        label: internal label map.
        spacing: voxel spacing in mm.
        min_ml: minimum component volume in millilitres.

    Returns:
        A new label map.
    """
    from scipy import ndimage

    foreground = label > 0
    box = foreground_box(foreground)
    if box is None:
        return label
    # labelled within the tumour's bounding box only: the same components, a fraction of the voxels
    components, _ = ndimage.label(foreground[box], structure=np.ones((3,) * label.ndim))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(components.ravel()) * voxel_ml
    small = sizes < min_ml
    small[0] = False
    out = label.copy()
    out[box][small[components]] = 0
    return out


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torch_network(module: torch.nn.Module | torch.jit.ScriptModule, device: torch.device,
                  precision: str = "fp32") -> Network:
    """Wrap a module as a CPU-in/CPU-out network callable running on ``device``, under autocast for
    ``precision`` (``auto``/``bf16``/``fp16``; see :func:`medseg.inference.precision.autocast_dtype`)."""
    from medseg.inference.precision import autocast, autocast_dtype

    module.eval()
    dtype = autocast_dtype(precision, device)

    def net(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(device, dtype):
            return module(x.to(device)).float().cpu()

    return net
