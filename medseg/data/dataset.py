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
    """Crop ``patch`` voxels from ``start`` and zero-pad where the volume is smaller."""
    sl = tuple(slice(int(s), int(s) + int(p)) for s, p in zip(start, patch))
    img = np.asarray(image[(slice(None), *sl)], dtype=np.float32)
    lab = np.asarray(label[sl], dtype=np.int64)
    if img.shape[1:] != tuple(patch):
        pad = [(0, 0)] + [(0, int(p) - n) for p, n in zip(patch, img.shape[1:])]
        img = np.pad(img, pad)
        lab = np.pad(lab, pad[1:])
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
        img, lab = extract_patch(case.image, case.label, _crop_start(centre, shape, self.patch), self.patch)
        img, lab = augment_patch(img, lab, rng, self.augment)
        return torch.from_numpy(img), torch.from_numpy(lab[None])


def augment_patch(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                  cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, per-channel intensity scale/shift and Gaussian noise (in place when possible)."""
    for axis in range(lab.ndim):
        if rng.random() < cfg.get("flip_prob", 0.0) and lab.shape[axis] > 1:
            img = np.flip(img, axis=axis + 1)
            lab = np.flip(lab, axis=axis)
    img = np.array(img, dtype=np.float32, order="C")  # copies: no negative strides reach torch
    lab = np.array(lab, order="C")
    nonzero = img != 0
    c = img.shape[0]
    if rng.random() < cfg.get("intensity_scale_prob", 0.0):
        s = cfg.get("intensity_scale", 0.1)
        img *= rng.uniform(1 - s, 1 + s, size=(c,) + (1,) * lab.ndim).astype(np.float32)
    if rng.random() < cfg.get("intensity_shift_prob", 0.0):
        s = cfg.get("intensity_shift", 0.1)
        img += rng.uniform(-s, s, size=(c,) + (1,) * lab.ndim).astype(np.float32)
    if rng.random() < cfg.get("noise_prob", 0.0):
        img += rng.normal(0, cfg.get("noise_std", 0.1), size=img.shape).astype(np.float32)
    img *= nonzero  # keep the background exactly zero, as at inference
    return img, lab
