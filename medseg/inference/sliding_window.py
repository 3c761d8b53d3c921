"""Sliding-window inference with Gaussian blending and optional flip test-time augmentation.

Backend-agnostic: the network is any callable mapping a ``(B, C, *roi)`` float tensor to
``(B, K, *roi)`` logits (eager PyTorch, TorchScript, or an ONNX Runtime wrapper). Windows are
batched; softmax probabilities are accumulated with a Gaussian importance weight so that window
borders do not show.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Network = Callable[[torch.Tensor], torch.Tensor]


def gaussian_weight(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian importance map of shape ``roi`` (peak 1, minimum > 0)."""
    axes = []
    for n in roi:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    return (w / w.max()).clamp_min(1e-3)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``roi`` covering ``size`` with the given overlap."""
    if size <= roi:
        return [0]
    step = max(1, int(round(roi * (1 - overlap))))
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def sliding_window_probs(net: Network, image: torch.Tensor, roi: Sequence[int], num_classes: int,
                         overlap: float = 0.5, batch_size: int = 2,
                         tta_flips: Sequence[Sequence[int]] = (), activation: str = "softmax",
                         stitch_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class (or region) probabilities over a whole image.

    Args:
        net: network callable (see module doc).
        image: ``(C, *spatial)`` tensor (2D or 3D spatial).
        roi: window size per spatial axis.
        num_classes: number of output channels ``K``.
        overlap: fraction of a window shared with its neighbour (0 <= overlap < 1).
        batch_size: windows per network call.
        tta_flips: extra passes, each a tuple of spatial axes (0-based) to flip; results are averaged.
        activation: ``softmax`` across channels (label-wise models) or ``sigmoid`` per channel
            (region-wise models).
        stitch_dtype: dtype of the probability accumulator (``float16`` halves its memory; whether
            it changes labels is measured by ``bench/compare.py``).

    Returns:
        ``(K, *spatial)`` float32 probabilities, on the CPU.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    spatial = tuple(int(s) for s in image.shape[1:])
    roi = tuple(int(r) for r in roi)
    if len(roi) != len(spatial):
        raise ValueError(f"roi {roi} does not match image spatial dims {spatial}")
    pad = [max(0, r - s) for r, s in zip(roi, spatial)]
    if any(pad):
        pad_arg = list(itertools.chain.from_iterable((p // 2, p - p // 2) for p in reversed(pad)))
        image = F.pad(image, pad_arg)
    padded = tuple(int(s) for s in image.shape[1:])
    weight = gaussian_weight(roi)
    acc = torch.zeros((num_classes, *padded), dtype=stitch_dtype)
    norm = torch.zeros(padded, dtype=torch.float32)
    starts = list(itertools.product(*[window_starts(s, r, overlap) for s, r in zip(padded, roi)]))
    passes: list[tuple[int, ...]] = [()] + [tuple(int(a) for a in f) for f in tta_flips]
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        slices = [tuple(slice(s, s + r) for s, r in zip(st, roi)) for st in chunk]
        batch = torch.stack([image[(slice(None), *sl)] for sl in slices])
        probs = torch.zeros((len(chunk), num_classes, *roi))
        for axes in passes:
            dims = [a + 2 for a in axes]
            x = batch.flip(dims) if dims else batch
            with torch.no_grad():
                out = net(x)
            out = torch.softmax(out.float(), dim=1) if activation == "softmax" else torch.sigmoid(out.float())
            probs += out.flip(dims) if dims else out
        probs /= len(passes)
        for sl, p in zip(slices, probs):
            acc[(slice(None), *sl)] += (p * weight).to(stitch_dtype)
            norm[sl] += weight
    acc = acc.float()  # no copy for the float32 default
    acc /= norm
    if any(pad):
        crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
        acc = acc[(slice(None), *crop)]
    return acc.contiguous()


def flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``axes`` (the mirroring sets nnU-Net uses)."""
    axes = list(axes)
    return [tuple(c) for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]


def as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float32 CPU tensor view of an array."""
    if isinstance(image, torch.Tensor):
        return image.float()
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
