"""Training patches from the preprocessed cache.

Each cached case is a memory-mapped ``(C, X, Y, Z)`` float32 image and ``(X, Y, Z)`` uint8 label.
:class:`PatchDataset` draws random patches with foreground oversampling and augments them. Item
``i`` of epoch ``e`` is generated from the seed ``(seed, e, i)`` alone, so the stream of patches is
identical whatever the number of loader workers, and an epoch can be replayed exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medseg.config import AugmentConfig
from medseg.data.augment import (channel_dropout, displacement, draw_spatial, intensity_transform, sample_patch,
                                 spatial_transform)
from medseg.errors import MedsegError


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
        # copy-on-write maps: read like "r" (nothing is ever written back), but writable views let
        # torch wrap blocks of them without a copy
        image = np.load(Path(entry["image"]), mmap_mode="c")
        label = np.load(Path(entry["label"]), mmap_mode="c")
        flat = np.asarray(label).ravel()
        fg = {int(c): np.flatnonzero(flat == c) for c in np.unique(flat) if c != 0}
        return cls(name=str(entry["name"]), image=image, label=label, fg_index=fg)


def _crop_start(centre: np.ndarray, shape: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    start = centre - np.asarray(patch) // 2
    hi = np.maximum(np.asarray(shape) - np.asarray(patch), 0)
    return np.clip(start, 0, hi)


def extract_patch(image: np.ndarray, label: np.ndarray, start: Sequence[int],
                  patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``patch`` voxels from ``start`` (which may lie outside the volume), zero outside.

    Returns a float32 image and a label of the cache's dtype (uint8), both fresh C-contiguous arrays.
    """
    shape = label.shape
    lo = [min(max(0, int(s)), n) for s, n in zip(start, shape)]
    hi = [max(min(n, int(s) + int(p)), lo_) for s, p, n, lo_ in zip(start, patch, shape, lo)]
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    if all(b - a == int(p) for a, b, p in zip(lo, hi, patch)):  # inside the volume: one copy
        return np.array(image[(slice(None), *src)], dtype=np.float32), np.array(label[src])
    img = np.zeros((image.shape[0], *(int(p) for p in patch)), np.float32)
    lab = np.zeros(tuple(int(p) for p in patch), label.dtype)
    dst = tuple(slice(a - int(s), b - int(s)) for a, b, s in zip(lo, hi, start))
    img[(slice(None), *dst)] = image[(slice(None), *src)]
    lab[dst] = label[src]
    return img, lab


class PatchDataset(Dataset):
    """Random training patches.

    Args:
        cases: cached cases.
        patch_size: patch shape (3 ints for 3D, 2 for 2D cases).
        length: items per epoch (iterations x batch size).
        fg_oversample: probability that a patch is centred on a foreground voxel of a randomly
            chosen present class (class-balanced), as in nnU-Net.
        augment: augmentation settings: :class:`medseg.config.AugmentConfig` or a mapping with its
            keys (a missing probability means the transform is off).
        seed: base seed.

    Raises:
        MedsegError: ``cases`` is empty.
    """

    def __init__(self, cases: Sequence[CachedCase], patch_size: Sequence[int], length: int,
                 fg_oversample: float, augment: AugmentConfig | Mapping[str, float], seed: int) -> None:
        if not cases:
            raise MedsegError("PatchDataset needs at least one case (the training split is empty)")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.length = int(length)
        self.fg_oversample = float(fg_oversample)
        self.augment = dataclasses.asdict(augment) if dataclasses.is_dataclass(augment) else dict(augment)
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
        start = _crop_start(centre, shape, self.patch)
        drawn = draw_spatial(rng, self.augment, self.patch)
        if drawn is None:
            img, lab = extract_patch(case.image, case.label, start, self.patch)
        else:  # resampled from the whole volume around the same centre
            matrix, elastic = drawn
            disp = displacement(self.patch, rng, self.augment) if elastic else None
            mid = start + (np.asarray(self.patch) - 1) / 2
            img, lab = sample_patch(case.image, case.label, mid, self.patch, matrix, disp)
        img, lab = flip_and_intensity(img, lab, rng, self.augment)
        return torch.from_numpy(img), torch.from_numpy(lab[None])


def augment_patch(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, float],
                  patch: Sequence[int] | None = None, drawn: Any = "draw") -> tuple[np.ndarray, np.ndarray]:
    """Spatial transforms of the centre ``patch`` of a block, then :func:`flip_and_intensity`.

    See :mod:`medseg.data.augment`. Returns C-contiguous copies (no negative strides reach torch).
    """
    patch = tuple(lab.shape) if patch is None else tuple(int(p) for p in patch)
    img, lab = spatial_transform(img, lab, patch, rng, cfg, drawn)
    return flip_and_intensity(img, lab, rng, cfg)


def flip_and_intensity(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                       cfg: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Mirror flips (each axis with ``flip_prob``), intensity transforms and channel dropout of a patch."""
    flipped = False
    for axis in range(lab.ndim):
        if rng.random() < cfg.get("flip_prob", 0.0) and lab.shape[axis] > 1:
            img = np.flip(img, axis=axis + 1)
            lab = np.flip(lab, axis=axis)
            flipped = True
    if flipped or not img.flags.c_contiguous:
        img = np.ascontiguousarray(img, dtype=np.float32)
        lab = np.ascontiguousarray(lab)
    return channel_dropout(intensity_transform(img, rng, cfg), rng, cfg), lab
