"""Training-patch augmentation, drawn from a per-item numpy RNG (so it is reproducible).

Spatial (one resampling for all of them, with torch ``grid_sample``: trilinear for the image,
nearest for the label): rotation about every axis, isotropic scaling, and elastic deformation (a
smooth random displacement field). The patch is cut with a margin first so that rotated and
scaled patches have real image data in their corners. Then mirror flips, and per channel:
brightness (multiplicative) and shift, contrast around the mean, gamma on the min-max range,
Gaussian blur, simulated low resolution (down- then upsampling), and Gaussian noise. The
background (exactly zero after preprocessing) stays zero, as at inference.

Each transform has a probability and a strength in ``train.augment`` (see
:class:`medseg.config.AugmentConfig`); they run in the data-loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def spatial_margin(patch: Sequence[int], cfg: Mapping[str, float]) -> list[int]:
    """Voxels to add on each side of a patch so that spatial augmentation has data to pull in."""
    if not any(cfg.get(k, 0.0) > 0 for k in ("rotate_prob", "scale_prob", "elastic_prob")):
        return [0] * len(patch)
    return [int(math.ceil(p * 0.2)) if p > 1 else 0 for p in patch]


def _rotation(rng: np.random.Generator, max_deg: float, axes: Sequence[int]) -> np.ndarray:
    r = np.eye(3)
    for a in axes:  # rotate about axis a
        t = np.deg2rad(rng.uniform(-max_deg, max_deg))
        i, j = [k for k in range(3) if k != a]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
        r = m @ r
    return r


def draw_spatial(rng: np.random.Generator, cfg: Mapping[str, float], patch: Sequence[int]
                 ) -> tuple[np.ndarray, bool] | None:
    """Draw the spatial transform of one patch: ``(3x3 matrix, elastic)``, or ``None`` for none."""
    flat = [i for i, s in enumerate(patch) if s == 1]
    matrix = np.eye(3)
    drawn = False
    if rng.random() < cfg.get("rotate_prob", 0.0):
        matrix = _rotation(rng, cfg.get("rotate_deg", 30.0), [2] if flat else [0, 1, 2]) @ matrix
        drawn = True
    if rng.random() < cfg.get("scale_prob", 0.0):
        s = cfg.get("scale_range", 0.2)
        matrix = matrix * rng.uniform(1 - s, 1 + s)
        drawn = True
    elastic = bool(rng.random() < cfg.get("elastic_prob", 0.0))
    return (matrix, elastic) if drawn or elastic else None


def spatial_transform(img: np.ndarray, lab: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                      cfg: Mapping[str, float], drawn: tuple[np.ndarray, bool] | None | str = "draw"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate / scale / deform a ``(C, *padded)`` patch and its label, returning ``patch``-sized arrays.

    ``drawn`` is the result of :func:`draw_spatial` (drawn here by default). Without a spatial
    transform this is a centre crop of the margin.
    """
    shape = lab.shape
    flat = [i for i, s in enumerate(patch) if s == 1]  # 2D patches: keep the singleton axis fixed
    if isinstance(drawn, str):
        drawn = draw_spatial(rng, cfg, patch)
    margin = [(n - p) // 2 for n, p in zip(shape, patch)]
    if drawn is None:
        sl = tuple(slice(m, m + p) for m, p in zip(margin, patch))
        return np.ascontiguousarray(img[(slice(None), *sl)]), np.ascontiguousarray(lab[sl])
    matrix, elastic = drawn
    matrix = matrix.copy()
    for a in flat:
        matrix[a, :], matrix[:, a] = 0.0, 0.0
        matrix[a, a] = 1.0
    # output voxels as offsets (in voxels) from the patch centre, transformed, then normalised
    axes = [torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in patch]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*patch, 3), axis order X, Y, Z
    grid = grid @ torch.from_numpy(matrix).T
    if elastic:
        grid = grid + _displacement(patch, rng, cfg, flat)
    grid = grid / torch.tensor([max(n - 1, 1) / 2 for n in shape], dtype=torch.float64)
    grid = grid.flip(-1).float()[None]  # grid_sample wants (z, y, x) order for (D, H, W) = (X, Y, Z)
    x = torch.from_numpy(np.ascontiguousarray(img))[None]
    y = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32))[None, None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    out_lab = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return out.numpy(), out_lab.numpy().astype(lab.dtype)


def _displacement(patch: Sequence[int], rng: np.random.Generator, cfg: Mapping[str, float],
                  flat: Sequence[int]) -> torch.Tensor:
    """A smooth random displacement field (voxels): a coarse random grid upsampled with cubic splines."""
    magnitude = cfg.get("elastic_magnitude", 4.0)
    coarse = [4 if p > 1 else 1 for p in patch]
    field = rng.normal(0.0, magnitude, size=(3, *coarse))
    for a in flat:
        field[a] = 0.0
    zoom = [p / c for p, c in zip(patch, coarse)]
    return torch.from_numpy(np.stack([ndimage.zoom(f, zoom, order=3, mode="nearest") for f in field], axis=-1))


def intensity_transform(img: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, float]) -> np.ndarray:
    """Per-channel intensity augmentation of a ``(C, *patch)`` float32 array (background kept zero).

    Works in place where it can; the background mask is only computed when a transform that
    would move zeros (shift, contrast, gamma, blur, low resolution, noise) is drawn.
    """
    c = img.shape[0]
    ones = (c,) + (1,) * (img.ndim - 1)
    draws = {k: rng.random() < cfg.get(f"{k}_prob", 0.0)
             for k in ("intensity_scale", "intensity_shift", "contrast", "gamma", "blur", "lowres", "noise")}
    background = (img == 0) if any(v for k, v in draws.items() if k != "intensity_scale") else None
    if draws["intensity_scale"]:
        s = cfg.get("intensity_scale", 0.1)
        img *= rng.uniform(1 - s, 1 + s, size=ones).astype(np.float32)
    if draws["intensity_shift"]:
        s = cfg.get("intensity_shift", 0.1)
        img += rng.uniform(-s, s, size=ones).astype(np.float32)
    if draws["contrast"]:
        s = cfg.get("contrast_range", 0.25)
        mean = img.mean(axis=tuple(range(1, img.ndim)), keepdims=True)
        img -= mean
        img *= rng.uniform(1 - s, 1 + s, size=ones).astype(np.float32)
        img += mean
    if draws["gamma"]:
        img = _gamma(img, rng, cfg.get("gamma_range", 0.3))
    if draws["blur"]:
        lo, hi = cfg.get("blur_sigma_min", 0.5), cfg.get("blur_sigma_max", 1.0)
        for k in range(c):
            img[k] = ndimage.gaussian_filter(img[k], sigma=[rng.uniform(lo, hi) if n > 1 else 0 for n in img.shape[1:]])
    if draws["lowres"]:
        img = _low_resolution(img, rng.uniform(1.0, cfg.get("lowres_factor", 2.0)))
    if draws["noise"]:
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        noise = torch.randn(img.shape, generator=gen).numpy()
        noise *= np.float32(cfg.get("noise_std", 0.1))
        img += noise
    if background is not None:
        img[background] = 0.0
    return img.astype(np.float32, copy=False)


def _gamma(img: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` per channel, ``g`` in [1 - spread, 1 + 2 spread]."""
    for k in range(img.shape[0]):
        lo, hi = float(img[k].min()), float(img[k].max())
        if hi - lo < 1e-6:
            continue
        g = rng.uniform(1 - spread, 1 + 2 * spread)
        img[k] = lo + (hi - lo) * ((img[k] - lo) / (hi - lo)) ** g
    return img


def _low_resolution(img: np.ndarray, factor: float) -> np.ndarray:
    """Nearest-neighbour downsampling by ``factor`` then linear upsampling back."""
    spatial = img.shape[1:]
    small = [max(1, int(round(n / factor))) if n > 1 else 1 for n in spatial]
    x = torch.from_numpy(np.ascontiguousarray(img))[None]
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    down = F.interpolate(x, size=small, mode="nearest")
    return F.interpolate(down, size=spatial, mode=mode, align_corners=False)[0].numpy()
