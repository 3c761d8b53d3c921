"""The MONAI bundle's own components: medseg's inference steps as MONAI transforms.

This file is copied verbatim into every exported bundle as ``medseg_bundle/scripts/components.py``
and is referenced from ``configs/inference.json`` as ``scripts.components.<Name>`` (MONAI's
``monai.bundle run`` puts the bundle root on ``sys.path``). It therefore imports only what the
bundle's ``configs/metadata.json`` declares (``monai``, ``torch``, ``numpy``, ``nibabel`` through
MONAI's writer, ``scipy`` for the component removal), never medseg.

Each component reproduces one step of medseg's :mod:`medseg.data.preprocess` /
:mod:`medseg.inference.predictor` exactly, so that the bundle and ``medseg-predict`` write the
same labels:

- :class:`CheckInputd`: the channel count and a non-empty image, one-line errors naming the file.
- :class:`ResampleToSpacingd`: the crop resampled to the target spacing the way medseg does it
  (output shape ``round(n * spacing / target)``, trilinear, ``align_corners=False``), with its
  non-zero mask resampled by nearest neighbour; invertible (``Invertd`` maps probabilities back).
- :class:`NonzeroZScored`: per-channel z-score over that mask, zero outside.
- :class:`ProbabilityNet`: the network followed by its softmax/sigmoid (medseg blends
  probabilities, not logits, in the sliding window), slice by slice for 2D networks.
- :class:`GaussianSlidingWindowInferer`: MONAI's sliding window with medseg's importance map
  (Gaussian, peak 1, floor 1e-3 of the peak).
- :class:`RegionsToLabelsd`: region probabilities -> label codes (innermost region > 0.5).
- :class:`RemoveSmallComponentsd`: drop 26-connected tumour components under ``min_ml`` ml.
- :class:`RelabelSmallEnhancingd`: relabel a case's enhancing tumour as tumour core when it totals
  under ``min_ml`` ml (the threshold medseg fitted on the validation split).
- :class:`GridWriter`: a NIfTI writer that writes on the input file's own grid (its affine, any
  axis order); MONAI's ``SaveImage(resample=False)`` keeps only a 2-D slice of a permuted affine.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, NibabelWriter
from monai.inferers import SlidingWindowInferer
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys


def _name(img: Any) -> str:
    """The source file of a MetaTensor, for error messages."""
    meta = getattr(img, "meta", {}) or {}
    return Path(str(meta.get("filename_or_obj", "<image>"))).name


def _with_meta(values: torch.Tensor, like: MetaTensor, affine: torch.Tensor | None = None) -> MetaTensor:
    """``values`` carrying ``like``'s metadata and transform trace (and ``affine`` if given)."""
    out = MetaTensor(values, meta=dict(like.meta), applied_operations=list(like.applied_operations))
    if affine is not None:
        out.affine = affine
    return out


def target_shape(shape: Sequence[int], spacing: Sequence[float], pixdim: Sequence[float]) -> tuple[int, ...]:
    """medseg's resampled shape: ``round(n * spacing / pixdim)`` per axis, a single slice staying one."""
    n = np.asarray(shape) * np.asarray(spacing, dtype=np.float64) / np.asarray(pixdim, dtype=np.float64)
    return tuple(1 if int(c) == 1 else int(max(1, round(v))) for c, v in zip(shape, n))


def _interpolate(x: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    """Resize ``(C, *spatial)`` to ``shape`` keeping the physical extent (no-op when equal)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    kw = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(x[None], size=tuple(int(s) for s in shape), mode=mode, **kw)[0]


class CheckInputd(MapTransform):
    """Refuse an image with the wrong number of channels or no non-zero voxel.

    Args:
        keys: the image key.
        channels: the channel names the network expects, in order.

    Raises:
        ValueError: one line naming the file, what was expected and what was found.
    """

    def __init__(self, keys: Any, channels: Sequence[str]) -> None:
        super().__init__(keys)
        self.channels = list(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim != 4 or img.shape[0] != len(self.channels):
                raise ValueError(f"{_name(img)}: expected {len(self.channels)} channels ({', '.join(self.channels)}) "
                                 f"as a 4D NIfTI with channels last, got an image of shape {tuple(img.shape)}")
            if not bool((img != 0).any()):
                raise ValueError(f"{_name(img)}: image is empty (every voxel is zero)")
        return d


class ResampleToSpacingd(MapTransform, InvertibleTransform):
    """Resample ``(C, X, Y, Z)`` images to ``pixdim`` mm exactly as medseg does.

    The output shape is ``round(n * spacing / pixdim)`` (a single slice stays one) and the image is
    resized trilinearly with ``align_corners=False``; the affine is updated to the new voxel grid.
    With ``mask_key`` the non-zero mask of the input (any channel) is resampled by nearest
    neighbour into ``data[mask_key]``, the voxels :class:`NonzeroZScored` normalises.
    The inverse resizes (trilinearly) back to the input shape and restores its affine.

    Args:
        keys: image keys.
        pixdim: target spacing (mm) along the array axes (R, A, S after ``Orientationd``).
        mask_key: where to put the resampled non-zero mask (``None``: not computed).
    """

    def __init__(self, keys: Any, pixdim: Sequence[float], mask_key: str | None = None) -> None:
        super().__init__(keys)
        self.pixdim = [float(p) for p in pixdim]
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img: MetaTensor = d[key]
            affine = torch.as_tensor(img.affine, dtype=torch.float64)
            spacing = np.linalg.norm(affine[:3, :3].numpy(), axis=0)
            before = tuple(int(s) for s in img.shape[1:])
            shape = target_shape(before, spacing, self.pixdim)
            values = _interpolate(img.as_tensor().float(), shape, "trilinear")
            if self.mask_key is not None:
                nonzero = (img.as_tensor() != 0).float()
                d[self.mask_key] = _interpolate(nonzero, shape, "nearest-exact") > 0.5
            scale = np.asarray(before, dtype=np.float64) / np.asarray(shape, dtype=np.float64)
            vox = np.eye(4)
            vox[:3, :3] = np.diag(scale)
            vox[:3, 3] = (scale - 1) / 2
            out = _with_meta(values, img, affine @ torch.from_numpy(vox))
            self.push_transform(out, orig_size=before, extra_info={"affine": affine})
            d[key] = out
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Resize back to the shape (and affine) before this transform, trilinearly."""
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.pop_transform(d[key])
            img: MetaTensor = d[key]
            values = _interpolate(img.as_tensor().float(), xform[TraceKeys.ORIG_SIZE], "trilinear")
            d[key] = _with_meta(values, img, xform[TraceKeys.EXTRA_INFO]["affine"])
        return d


class NonzeroZScored(MapTransform):
    """Z-score each channel over its masked voxels (population std), zero outside the mask.

    A channel with fewer than two masked voxels is all zero, as in medseg.

    Args:
        keys: image keys.
        mask_key: the ``(C, *spatial)`` boolean mask written by :class:`ResampleToSpacingd`.
    """

    def __init__(self, keys: Any, mask_key: str) -> None:
        super().__init__(keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = np.asarray(d[self.mask_key])
        for key in self.key_iterator(d):
            img: MetaTensor = d[key]
            image = img.as_tensor().numpy().astype(np.float32, copy=False)
            out = np.stack([_zscore_channel(x, m) for x, m in zip(image, mask)]).astype(np.float32, copy=False)
            d[key] = _with_meta(torch.from_numpy(out), img)
        return d


def _zscore_channel(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """One channel z-scored over its mask ``m`` (population std), zero outside; all zero under 2 voxels."""
    vals = x[m]
    if vals.size < 2:
        return np.zeros_like(x)
    return np.where(m, (x - float(vals.mean())) / max(float(vals.std()), 1e-8), 0.0)


class ProbabilityNet(torch.nn.Module):
    """A network followed by its activation, so that the sliding window blends probabilities.

    Args:
        net: the network (``network_def``): ``(B, C, *patch)`` -> logits.
        activation: ``softmax`` across channels or ``sigmoid`` per channel.
        slicewise: run a 2D network slice by slice over the last axis of a 3D input.
    """

    def __init__(self, net: torch.nn.Module, activation: str = "softmax", slicewise: bool = False) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
        self.net = net
        self.activation = activation
        self.slicewise = slicewise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K, *spatial)`` of ``(B, C, *spatial)`` inputs."""
        if self.slicewise:
            b, c, sx, sy, sz = x.shape
            y = self.net(x.permute(0, 4, 1, 2, 3).reshape(b * sz, c, sx, sy))
            logits = y.reshape(b, sz, y.shape[1], sx, sy).permute(0, 2, 3, 4, 1)
        else:
            logits = self.net(x)
        logits = logits.float()
        return torch.softmax(logits, dim=1) if self.activation == "softmax" else torch.sigmoid(logits)


def importance_map(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian window weight (sigma = ``sigma_scale`` of the window), peak 1, floor 1e-3."""
    weight = torch.ones(())
    for n in roi:
        x = torch.arange(int(n), dtype=torch.float32) - (int(n) - 1) / 2
        weight = weight[..., None] * torch.exp(-0.5 * (x / max(int(n) * sigma_scale, 1e-6)) ** 2)
    return (weight / weight.max()).clamp_min(1e-3)


class GaussianSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's :class:`~monai.inferers.SlidingWindowInferer` (same windows, padding and stitching)
    with medseg's Gaussian importance map (:func:`importance_map`) instead of MONAI's, whose floor
    is relative to a peak below 1.

    Args:
        roi_size: the window.
        sigma_scale: Gaussian sigma as a fraction of the window.
        kwargs: the other arguments of ``SlidingWindowInferer`` (``sw_batch_size``, ``overlap``, ...).
    """

    def __init__(self, roi_size: Sequence[int], sigma_scale: float = 0.125, **kwargs: Any) -> None:
        super().__init__(roi_size=roi_size, mode="gaussian", sigma_scale=sigma_scale, **kwargs)
        self.roi_weight_map = importance_map(roi_size, sigma_scale)


class RegionsToLabelsd(MapTransform):
    """Region probabilities ``(R, *spatial)`` -> a ``(1, *spatial)`` label map: each voxel gets the
    code of the innermost region (listed outermost first) whose probability exceeds 0.5.

    Args:
        keys: prediction keys.
        codes: the label code written for each region, in channel order.
    """

    def __init__(self, keys: Any, codes: Sequence[int]) -> None:
        super().__init__(keys)
        self.codes = [int(c) for c in codes]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probs = d[key]
            out = torch.zeros((1, *probs.shape[1:]), dtype=torch.uint8)
            for r, code in enumerate(self.codes):
                out[0][torch.as_tensor(probs[r]) > 0.5] = code
            d[key] = _with_meta(out, probs) if isinstance(probs, MetaTensor) else out
        return d


class RemoveSmallComponentsd(MapTransform):
    """Set to background every 26-connected tumour component (label > 0) under ``min_ml`` ml.

    Voxel volumes come from the image's original affine (the input grid the label lies on).

    Args:
        keys: ``(1, X, Y, Z)`` label-map keys.
        min_ml: minimum component volume in millilitres (0 keeps every component).
    """

    def __init__(self, keys: Any, min_ml: float) -> None:
        super().__init__(keys)
        self.min_ml = float(min_ml)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_ml <= 0:
            return d
        from scipy import ndimage

        for key in self.key_iterator(d):
            lab = d[key]
            label, voxel_ml = _label_and_voxel_ml(lab)
            components, n = ndimage.label(label > 0, structure=np.ones((3,) * label.ndim))
            if n == 0:
                continue
            sizes = np.bincount(components.ravel()) * voxel_ml
            small = sizes < self.min_ml
            small[0] = False
            label[small[components]] = 0
            d[key] = _with_meta(torch.from_numpy(label)[None], lab)
        return d


def _label_and_voxel_ml(lab: MetaTensor) -> tuple[np.ndarray, float]:
    """A writable copy of a ``(1, X, Y, Z)`` label map and its voxel volume in ml, from the image's
    original affine (the input grid the label lies on)."""
    affine = np.asarray(lab.meta.get("original_affine", lab.affine), dtype=np.float64)
    return np.asarray(lab.as_tensor()[0]).copy(), float(np.prod(np.linalg.norm(affine[:3, :3], axis=0))) / 1000


class RelabelSmallEnhancingd(MapTransform):
    """Relabel the enhancing-tumour voxels (``codes``) as ``replacement`` (tumour core) when they
    total less than ``min_ml`` ml in the case; tumour core and whole tumour are unchanged.

    Voxel volumes come from the image's original affine (the input grid the label lies on).

    Args:
        keys: ``(1, X, Y, Z)`` label-map keys.
        min_ml: threshold in millilitres (0: off).
        codes: the enhancing-tumour label codes.
        replacement: the code they become.
    """

    def __init__(self, keys: Any, min_ml: float, codes: Sequence[int], replacement: int) -> None:
        super().__init__(keys)
        self.min_ml, self.codes, self.replacement = float(min_ml), [int(c) for c in codes], int(replacement)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_ml <= 0:
            return d
        for key in self.key_iterator(d):
            lab = d[key]
            label, voxel_ml = _label_and_voxel_ml(lab)
            mask = np.isin(label, self.codes)
            ml = int(mask.sum()) * voxel_ml
            if 0 < ml < self.min_ml:
                label[mask] = self.replacement
                d[key] = _with_meta(torch.from_numpy(label)[None], lab)
        return d


class GridWriter(NibabelWriter):
    """MONAI's NIfTI writer, writing on the input file's own grid without resampling.

    ``SaveImaged(writer="scripts.components.GridWriter", resample=False)`` writes the array with the
    input's ``original_affine`` after checking that the shape is the input's; any axis order (RAS,
    LPS, PSR, oblique) is written as it came in.

    Raises:
        ValueError: the array is not on the input grid (its shape differs).
    """

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options: Any) -> None:
        """Keep the data as it is; take the input file's affine (``original_affine``)."""
        if resample:
            super().set_metadata(meta_dict, resample=True, **options)
            return
        meta = dict(meta_dict or {})
        affine = meta.get("original_affine", meta.get("affine"))
        shape = [int(s) for s in np.asarray(meta.get("spatial_shape", []))][:3]
        if shape and list(self.data_obj.shape[:len(shape)]) != shape:
            raise ValueError(f"{Path(str(meta.get('filename_or_obj', ''))).name}: the prediction "
                             f"{tuple(self.data_obj.shape)} is not on the input grid {tuple(shape)}")
        if self.output_dtype is None and hasattr(self.data_obj, "dtype"):
            self.output_dtype = self.data_obj.dtype
        self.affine = np.asarray(affine, dtype=np.float64)
