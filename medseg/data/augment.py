"""Training-patch augmentation, drawn from a per-item numpy RNG (so it is reproducible).

Spatial (one resampling for all of them, with torch ``grid_sample``: trilinear for the image,
nearest for the label): rotation about every axis, isotropic scaling, and elastic deformation (a
smooth random displacement field). Transformed patches are resampled straight from the whole
volume (:func:`sample_patch`), so rotated and scaled patches have real image data in their
corners and nothing is copied but the patch itself. Then mirror flips, and per channel:
brightness (multiplicative) and shift, contrast around the mean, gamma on the min-max range,
Gaussian blur, simulated low resolution (down- then upsampling), and Gaussian noise. The
background (exactly zero after preprocessing) stays zero, as at inference. Last, channel dropout
(missing-contrast training, :func:`channel_dropout`): with ``channel_dropout_prob`` one to
``channel_dropout_max`` channels (never all) are set to zero, the value a missing contrast has
after normalisation and what the predictor feeds for it; :func:`accepted_subsets` lists the
channel subsets a model so trained accepts (recorded in its checkpoint and artifact).

Each transform has a probability and a strength in ``train.augment`` (see
:class:`medseg.config.AugmentConfig`); they run in the data-loader workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


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


def sample_patch(image: np.ndarray, label: np.ndarray, centre: Sequence[float], patch: Sequence[int],
                 matrix: np.ndarray, displacement: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample a rotated / scaled / deformed patch straight from a whole ``(C, X, Y, Z)`` volume.

    The output voxel at offset ``o`` (voxels, from the patch centre) reads the volume at
    ``centre + matrix @ o (+ displacement[o])``: trilinear for the image, nearest for the label,
    zero outside the volume. Only the block of the volume that the patch can reach is read (a
    view, not a copy, when ``image`` is a memory map). Axes of size 1 in ``patch`` (2D patches)
    stay fixed at ``centre``.
    """
    patch = tuple(int(p) for p in patch)
    m = np.array(matrix, dtype=np.float64)
    for a in [i for i, p in enumerate(patch) if p == 1]:
        m[a, :], m[:, a] = 0.0, 0.0
        m[a, a] = 1.0
    centre = np.asarray(centre, dtype=np.float64)
    shape = np.asarray(label.shape)
    reach = np.abs(m) @ ((np.asarray(patch) - 1) / 2) + 1.0
    if displacement is not None:
        reach = reach + float(displacement.abs().max())
    lo = np.clip(np.floor(centre - reach).astype(int), 0, shape)
    hi = np.clip(np.ceil(centre + reach).astype(int) + 1, lo, shape)
    channels = image.shape[0]
    if np.any(hi <= lo):  # the patch lies entirely outside the volume
        return np.zeros((channels, *patch), np.float32), np.zeros(patch, label.dtype)
    block = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = hi - lo
    c = centre - lo
    axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    views = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    grid = torch.empty((*patch, 3), dtype=torch.float32)
    for i in range(3):  # volume axis i -> grid component 2 - i (grid_sample's x indexes the last axis)
        scale = 2.0 / (sub[i] - 1) if sub[i] > 1 else 0.0  # align_corners=True: -1 -> 0, 1 -> sub - 1
        comp = sum((axes[j] * (m[i, j] * scale)).view(views[j]) for j in range(3)) + (c[i] * scale - 1.0)
        if displacement is not None:
            comp = comp + displacement[..., i] * scale
        grid[..., 2 - i] = comp
    out = _grid_sample(torch.from_numpy(image[(slice(None), *block)]), grid, "bilinear")
    lab_block = label[block]
    if not lab_block.any():  # no foreground within reach (most random patches)
        return out.numpy(), np.zeros(patch, label.dtype)
    out_lab = _grid_sample(torch.from_numpy(np.asarray(lab_block, dtype=np.float32))[None], grid, "nearest")[0]
    return out.numpy(), out_lab.numpy().astype(label.dtype)


def _grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` of one ``(C, ...)`` volume at a ``(*patch, 3)`` grid -> ``(C, *patch)``.

    torch's 3D CPU kernel parallelises over the batch only, so the output is cut into as many
    slabs as there are torch threads and sampled as a batch (same volume, broadcast).
    """
    k = torch.get_num_threads()
    n = grid.shape[0]
    if k < 2 or n % k or n < 2 * k:
        return F.grid_sample(x[None], grid[None], mode=mode, padding_mode="zeros", align_corners=True)[0]
    slabs = grid.view(k, n // k, *grid.shape[1:])
    out = F.grid_sample(x[None].expand(k, *x.shape), slabs, mode=mode, padding_mode="zeros", align_corners=True)
    return out.transpose(0, 1).reshape(x.shape[0], *grid.shape[:-1])


def spatial_transform(img: np.ndarray, lab: np.ndarray, patch: Sequence[int], rng: np.random.Generator,
                      cfg: Mapping[str, float], drawn: tuple[np.ndarray, bool] | None | str = "draw"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate / scale / deform the centre ``patch`` of a ``(C, *shape)`` block and its label.

    ``drawn`` is the result of :func:`draw_spatial` (drawn here by default). Without a spatial
    transform this is a centre crop. Training draws patches from whole volumes with
    :func:`sample_patch` directly.
    """
    if isinstance(drawn, str):
        drawn = draw_spatial(rng, cfg, patch)
    shape = lab.shape
    if drawn is None:
        sl = tuple(slice((n - p) // 2, (n - p) // 2 + p) for n, p in zip(shape, patch))
        return np.array(img[(slice(None), *sl)], dtype=np.float32), np.array(lab[sl])
    matrix, elastic = drawn
    disp = displacement(patch, rng, cfg) if elastic else None
    centre = [(n - p) // 2 + (p - 1) / 2 for n, p in zip(shape, patch)]
    return sample_patch(img, lab, centre, patch, matrix, disp)


def displacement(patch: Sequence[int], rng: np.random.Generator, cfg: Mapping[str, float]) -> torch.Tensor:
    """A smooth random displacement field (voxels, ``(*patch, 3)``): a coarse random grid upsampled
    with cubic splines; zero along axes of size 1."""
    magnitude = cfg.get("elastic_magnitude", 4.0)
    coarse = [4 if p > 1 else 1 for p in patch]
    field = rng.normal(0.0, magnitude, size=(3, *coarse))
    for a in [i for i, p in enumerate(patch) if p == 1]:
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
        sigmas = [[rng.uniform(lo, hi) if n > 1 else 0 for n in img.shape[1:]] for _ in range(c)]

        def blur(k: int) -> None:  # scipy releases the GIL: channels run in parallel
            ndimage.gaussian_filter(img[k], sigma=sigmas[k], output=img[k])

        list(_pool().map(blur, range(c)))
    if draws["lowres"]:
        img = _low_resolution(img, rng.uniform(1.0, cfg.get("lowres_factor", 2.0)))
    if draws["noise"]:
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        noise = torch.randn(img.shape, generator=gen).numpy()
        noise *= np.float32(cfg.get("noise_std", 0.1))
        img += noise
    if background is not None:
        np.copyto(img, np.float32(0.0), where=background)
    return img.astype(np.float32, copy=False)


def channel_dropout(img: np.ndarray, rng: np.random.Generator, cfg: Mapping[str, float]) -> np.ndarray:
    """Zero 1..``channel_dropout_max`` randomly chosen channels of a ``(C, *patch)`` array with
    probability ``channel_dropout_prob`` (in place; at least one channel is always kept).

    Nothing is drawn from ``rng`` when the probability is 0 or there is one channel, so the patch
    stream of a model trained without dropout is unchanged.
    """
    prob = float(cfg.get("channel_dropout_prob", 0.0) or 0.0)
    most = min(int(cfg.get("channel_dropout_max", 1) or 1), img.shape[0] - 1)
    if prob <= 0.0 or most < 1 or rng.random() >= prob:
        return img
    k = int(rng.integers(1, most + 1))
    img[rng.choice(img.shape[0], size=k, replace=False)] = 0.0
    return img


def accepted_subsets(channels: Sequence[str], cfg: Any) -> list[list[str]]:
    """The channel subsets a model trained with ``cfg``'s channel dropout accepts (``cfg``: the
    ``train.augment`` config or a mapping of it): the full set, plus every subset lacking
    1..``channel_dropout_max`` channels (never all) when dropout is on."""
    from itertools import combinations

    def get(key: str, default: float) -> float:
        value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
        return default if value is None else value

    channels = list(channels)
    prob = float(get("channel_dropout_prob", 0.0))
    most = min(int(get("channel_dropout_max", 1)), len(channels) - 1) if prob > 0 else 0
    subsets = [channels]
    for k in range(1, most + 1):
        for dropped in combinations(channels, k):
            subsets.append([c for c in channels if c not in dropped])
    return subsets


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    """A small shared thread pool (as many threads as torch uses) for per-channel filters, one per
    process: a loader worker forked after the parent used it gets its own (the parent's threads do
    not exist in the child)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="medseg-augment"))
    return _POOL[1]


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
