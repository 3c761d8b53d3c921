"""Whole-case prediction: preprocess -> sliding window -> restore onto the source grid.

Used by ``evaluate`` (with the trained network) and ``predict`` (with the exported artifact), so
both score exactly the same computation. Imports neither MONAI nor Hydra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.data.preprocess import PreprocessSpec, preprocess, restore
from medseg.inference.sliding_window import Network, flip_sets, sliding_window_probs
from medseg.inference.targets import Target
from medseg.errors import DataError


@dataclass
class CasePrediction:
    """Result of predicting one case.

    ``label``: ``(X, Y, Z)`` uint8 on the source grid; ``max_foreground_prob``: highest
    non-background probability anywhere (a detection score); ``seconds``: wall time.
    """

    label: np.ndarray
    max_foreground_prob: float
    seconds: float


class CasePredictor:
    """Predict label maps for raw cases.

    Args:
        net: network callable on ``(B, C, *patch)`` tensors returning logits, or several (an
            ensemble, e.g. the folds of a cross-validation): their probabilities are averaged.
        spec: preprocessing the network was trained with.
        patch_size: sliding-window size.
        target: what the network outputs (label-wise softmax or region-wise sigmoid).
        overlap: window overlap fraction.
        batch_size: windows per network call.
        tta_axes: spatial axes to mirror for test-time augmentation (all subsets are used).
        min_component_ml: remove connected tumour components smaller than this (ml); 0 keeps all.
        max_memory_gb: refuse a case whose estimated peak RSS exceeds this (``None``: no cap).
        model_cfg: the network's config (channels, strides) for the activation-memory estimate.
        stitch_dtype: dtype of the probability accumulator (``float32``, ``float16``, ``bfloat16``).
    """

    def __init__(self, net: Network | Sequence[Network], spec: PreprocessSpec, patch_size: Sequence[int],
                 target: Target, overlap: float = 0.5, batch_size: int = 2, tta_axes: Sequence[int] = (),
                 min_component_ml: float = 0.0, max_memory_gb: float | None = None,
                 model_cfg: dict | None = None, stitch_dtype: str = "float32") -> None:
        self.nets = list(net) if isinstance(net, Sequence) else [net]
        self.spec = spec
        self.patch_size = tuple(int(p) for p in patch_size)
        self.target = target
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.flips = flip_sets(tta_axes)
        self.min_component_ml = float(min_component_ml)
        self.max_memory_gb = None if max_memory_gb is None else float(max_memory_gb)
        if stitch_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"stitch dtype must be float32, float16 or bfloat16, got {stitch_dtype!r}")
        self.stitch_dtype = getattr(torch, stitch_dtype)
        self.window_bytes = window_activation_bytes(model_cfg, self.patch_size, self.batch_size,
                                                    len(spec.channels), target.channels)

    def estimate_bytes(self, image_shape: Sequence[int], affine: np.ndarray) -> int:
        """Upper estimate of the memory one case adds on top of its loaded image (bytes).

        Terms: the reoriented copy and non-zero mask of the image, the resampled image on the model
        grid (without the foreground crop, so an upper bound) with its interpolation temporaries,
        the per-class probability accumulator and normaliser, one batch of windows with its network
        activations, and the probabilities resampled back onto the native grid with the label map.
        ``bench/infer.py`` compares it with measured peaks.
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
                + k * native * 4 * 2 + native)  # probabilities on the native grid, label

    def check_memory(self, image: np.ndarray, affine: np.ndarray, name: str) -> None:
        """Refuse a case whose estimated peak exceeds ``max_memory_gb`` before allocating anything."""
        if self.max_memory_gb is None:
            return
        need = current_rss_bytes() + self.estimate_bytes(image.shape, affine)
        if need > self.max_memory_gb * 1e9:
            raise DataError(name, f"predicting this case needs about {need / 1e9:.1f} GB (image {tuple(image.shape)}) "
                                  f"> the memory cap inference.max_memory_gb={self.max_memory_gb:g}; raise the cap or "
                                  f"lower inference.sw_batch_size")

    def __call__(self, image: np.ndarray, affine: np.ndarray, name: str = "<case>") -> CasePrediction:
        """Predict one case given its ``(C, X, Y, Z)`` image and voxel -> RAS affine."""
        start = time.perf_counter()
        self.check_memory(image, affine, name)
        pre, _, geom = preprocess(image, affine, self.spec, name=name)
        x = torch.from_numpy(pre)
        probs = sliding_window_probs(self.nets[0], x, self.patch_size, self.target.channels, overlap=self.overlap,
                                     batch_size=self.batch_size, tta_flips=self.flips,
                                     activation=self.target.activation, stitch_dtype=self.stitch_dtype)
        for net in self.nets[1:]:
            probs += sliding_window_probs(net, x, self.patch_size, self.target.channels, overlap=self.overlap,
                                          batch_size=self.batch_size, tta_flips=self.flips,
                                          activation=self.target.activation, stitch_dtype=self.stitch_dtype)
        probs /= len(self.nets)
        max_fg = self.target.foreground_score(probs)
        label = restore(probs, geom, self.target.decode)
        if self.min_component_ml > 0:
            spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
            label = remove_small_components(label, spacing, self.min_component_ml)
        return CasePrediction(label=label, max_foreground_prob=max_fg, seconds=time.perf_counter() - start)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def window_activation_bytes(model_cfg: dict | None, patch: Sequence[int], batch: int, in_channels: int,
                            out_channels: int) -> int:
    """Estimated activation memory of one batch of windows through the U-Net at inference: every
    level's feature maps (kept for the skip connections) times three (convolution, norm and ReLU
    outputs alive at once), input and output included."""
    vox = int(np.prod(patch))
    if not model_cfg:
        return batch * vox * 4 * (in_channels + out_channels) * 8
    channels = [int(c) for c in model_cfg.get("channels", [])]
    strides = [int(s) for s in model_cfg.get("strides", [])]
    total, scale = 0, 1
    for i, ch in enumerate(channels):
        total += ch * max(1, vox // scale) * 3 * (2 if i < len(channels) - 1 else 1)  # encoder + decoder
        if i < len(strides):
            scale *= strides[i] ** (3 if int(model_cfg.get("spatial_dims", 3)) == 3 else 2)
    return batch * 4 * (total + vox * (in_channels + out_channels))


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

    components, n = ndimage.label(label > 0, structure=np.ones((3,) * label.ndim))
    if n == 0:
        return label
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(components.ravel()) * voxel_ml
    small = sizes < min_ml
    small[0] = False
    out = label.copy()
    out[small[components]] = 0
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
