"""Whole-case prediction: preprocess -> sliding window -> restore onto the source grid.

Used by ``evaluate`` (with the trained network) and ``predict`` (with the exported artifact), so
both score exactly the same computation. Imports neither MONAI nor Hydra.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.data.preprocess import PreprocessSpec, preprocess, restore
from medseg.engine.sliding_window import Network, flip_sets, sliding_window_probs
from medseg.engine.targets import Target


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
    """

    def __init__(self, net: Network | Sequence[Network], spec: PreprocessSpec, patch_size: Sequence[int], target: Target,
                 overlap: float = 0.5, batch_size: int = 2, tta_axes: Sequence[int] = (),
                 min_component_ml: float = 0.0) -> None:
        self.nets = list(net) if isinstance(net, Sequence) else [net]
        self.spec = spec
        self.patch_size = tuple(int(p) for p in patch_size)
        self.target = target
        self.overlap = float(overlap)
        self.batch_size = int(batch_size)
        self.flips = flip_sets(tta_axes)
        self.min_component_ml = float(min_component_ml)

    def __call__(self, image: np.ndarray, affine: np.ndarray, name: str = "<case>") -> CasePrediction:
        """Predict one case given its ``(C, X, Y, Z)`` image and voxel -> RAS affine."""
        start = time.perf_counter()
        pre, _, geom = preprocess(image, affine, self.spec, name=name)
        x = torch.from_numpy(pre)
        probs = sliding_window_probs(self.nets[0], x, self.patch_size, self.target.channels, overlap=self.overlap,
                                     batch_size=self.batch_size, tta_flips=self.flips,
                                     activation=self.target.activation)
        for net in self.nets[1:]:
            probs += sliding_window_probs(net, x, self.patch_size, self.target.channels, overlap=self.overlap,
                                          batch_size=self.batch_size, tta_flips=self.flips,
                                          activation=self.target.activation)
        probs /= len(self.nets)
        max_fg = self.target.foreground_score(probs)
        label = restore(probs, geom, self.target.decode)
        if self.min_component_ml > 0:
            spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
            label = remove_small_components(label, spacing, self.min_component_ml)
        return CasePrediction(label=label, max_foreground_prob=max_fg, seconds=time.perf_counter() - start)


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


def torch_network(module: torch.nn.Module | torch.jit.ScriptModule, device: torch.device) -> Network:
    """Wrap a module as a CPU-in/CPU-out network callable running on ``device``."""
    module.eval()

    def net(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.to(device)).float().cpu()

    return net
