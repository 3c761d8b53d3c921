"""Training patches from the preprocessed cache.

Each cached case is a memory-mapped ``(C, X, Y, Z)`` float32 image and ``(X, Y, Z)`` uint8 label.
:class:`PatchDataset` draws random patches with foreground oversampling and augments them. Item
``i`` of epoch ``e`` is generated from the seed ``(seed, e, i)`` alone, so the stream of patches is
identical whatever the number of loader workers, and an epoch can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.data.augment import draw_spatial, intensity_transform, spatial_margin, spatial_transform


@dataclass
class CachedCase:
    """A preprocessed case: memory-mapped arrays plus per-class foreground voxel indices."""

    name: str
    image: np.ndarray
    label: np.ndarray
    fg_index: dict[int, np.ndarray]

    @classmethod
    def load(cls, entry: Mapping[str, Any]) -> CachedCase:
        """Open a datalist entry (``name``, ``image``, ``label`` paths to ``.npy``)."""
        image = np.load(Path(entry["image"]), mmap_mode="r")
        label = np.load(Path(entry["label"]), mmap_mode="r")
        flat = np.asarray(label).ravel()
        fg = {int(c): np.flatnonzero(flat == c) for c in np.unique(flat) if c != 0}
        return cls(name=str(entry["name"]), image=image, label=label, fg_index=fg)


def _crop_start(centre: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    start = centre - np.asarray(patch) // 2
    hi = np.maximum(np.asarray(shape) - np.asarray(patch), 0)
    return np.clip(start, 0, hi)


def extract_patch(image: np.ndarray, label: np.ndarray, start: Sequence[int],
                  patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``patch`` voxels from ``start`` (which may lie outside the volume), zero-padding outside."""
    shape = label.shape
    lo = [min(max(0, int(s)), n) for s, n in zip(start, shape)]
    hi = [max(min(n, int(s) + int(p)), lo_) for s, p, n, lo_ in zip(start, patch, shape, lo)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    img = np.asarray(image[(slice(None), *sl)], dtype=np.float32)
    lab = np.asarray(label[sl], dtype=np.int64)
    before = [a - int(s) for a, s in zip(lo, start)]
    after = [int(p) - n - b for p, n, b in zip(patch, img.shape[1:], before)]
    if any(before) or any(after):
        pad = [(b, a) for b, a in zip(before, after)]
        img = np.pad(img, [(0, 0), *pad])
        lab = np.pad(lab, pad)
    return img, lab


class PatchDataset(Dataset):
    """Random training patches.

    Args:
        cases: cached cases.
        patch_size: patch shape (3 ints for 3D, 2 for 2D cases).
        length: items per epoch (iterations x batch size).
        fg_oversample: probability that a patch is centred on a foreground voxel of a randomly
            chosen present class (class-balanced), as in nnU-Net.
        augment: augmentation settings (see :class:`medseg.config.AugmentConfig`).
        seed: base seed.
    """

    def __init__(self, cases: Sequence[CachedCase], patch_size: Sequence[int], length: int,
                 fg_oversample: float, augment: Mapping[str, float], seed: int) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.length = int(length)
        self.fg_oversample = float(fg_oversample)
        self.augment = dict(augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose patches ``__getitem__`` produces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        shape = case.label.shape
        if case.fg_index and rng.random() < self.fg_oversample:
            cls = sorted(case.fg_index)[int(rng.integers(len(case.fg_index)))]
            flat = case.fg_index[cls][int(rng.integers(len(case.fg_index[cls])))]
            centre = np.array(np.unravel_index(flat, shape))
        else:
            centre = np.array([rng.integers(s) for s in shape])
        drawn = draw_spatial(rng, self.augment, self.patch)
        margin = np.asarray(spatial_margin(self.patch, self.augment) if drawn else [0] * len(self.patch))
        padded = tuple(int(p) for p in np.asarray(self.patch) + 2 * margin)
        start = _crop_start(centre, shape, self.patch) - margin  # the patch stays where sampling put it
        img, lab = extract_patch(case.image, case.label, start, padded)
        img, lab = augment_patch(img, lab, rng, self.augment, self.patch, drawn)
        return torch.from_numpy(img), torch.from_numpy(lab[None])


def augment_patch(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, float],
                  patch: Sequence[int] | None = None, drawn: Any = "draw") -> tuple[np.ndarray, np.ndarray]:
    """Spatial transforms (cutting ``patch`` out of the margin), mirror flips, intensity transforms.

    See :mod:`medseg.data.augment`. Returns C-contiguous copies (no negative strides reach torch).
    """
    patch = tuple(lab.shape) if patch is None else tuple(int(p) for p in patch)
    img, lab = spatial_transform(img, lab, patch, rng, cfg, drawn)
    for axis in range(lab.ndim):
        if rng.random() < cfg.get("flip_prob", 0.0) and lab.shape[axis] > 1:
            img = np.flip(img, axis=axis + 1)
            lab = np.flip(lab, axis=axis)
    img = np.array(img, dtype=np.float32, order="C")
    lab = np.array(lab, order="C")
    return intensity_transform(img, rng, cfg), lab
