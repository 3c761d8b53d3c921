"""Augmentation: reproducible from the RNG, image and label stay aligned under spatial transforms,
the background stays zero, 2D patches keep their single slice."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data.augment import intensity_transform, spatial_margin, spatial_transform
from medseg.data.dataset import augment_patch

ALL_SPATIAL = {"rotate_prob": 1.0, "rotate_deg": 40.0, "scale_prob": 1.0, "scale_range": 0.3,
               "elastic_prob": 1.0, "elastic_magnitude": 2.0}


def _cube(shape=(28, 28, 28), r=6):
    lab = np.zeros(shape, np.int64)
    c = [s // 2 for s in shape]
    lab[tuple(slice(x - r, x + r) if s > 1 else slice(None) for x, s in zip(c, shape))] = 1
    img = np.stack([lab.astype(np.float32) + 0.01, 2 * lab.astype(np.float32) + 0.01])
    return img, lab


def test_spatial_transform_keeps_image_and_label_aligned():
    img, lab = _cube()
    for seed in range(5):
        out, out_lab = spatial_transform(img, lab, (20, 20, 20), np.random.default_rng(seed), ALL_SPATIAL)
        assert out.shape == (2, 20, 20, 20) and out_lab.shape == (20, 20, 20)
        assert set(np.unique(out_lab)) <= {0, 1} and out_lab.any()
        inside, outside = out[0][out_lab == 1], out[0][out_lab == 0]
        assert inside.mean() > 0.8 and outside.mean() < 0.2


def test_same_seed_same_patch_and_2d_keeps_its_slice():
    img, lab = _cube()
    cfg = {**ALL_SPATIAL, "flip_prob": 0.5, "gamma_prob": 1.0, "noise_prob": 1.0}
    a = augment_patch(img.copy(), lab.copy(), np.random.default_rng(7), cfg, (20, 20, 20))
    b = augment_patch(img.copy(), lab.copy(), np.random.default_rng(7), cfg, (20, 20, 20))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    img2, lab2 = _cube((28, 28, 1))
    out, out_lab = spatial_transform(img2, lab2, (20, 20, 1), np.random.default_rng(1), ALL_SPATIAL)
    assert out.shape == (2, 20, 20, 1) and out_lab.any()
    assert spatial_margin((20, 20, 1), ALL_SPATIAL) == [4, 4, 0] and spatial_margin((20, 20, 20), {}) == [0, 0, 0]


@pytest.mark.parametrize("name", ["intensity_scale", "intensity_shift", "contrast", "gamma", "blur", "lowres",
                                  "noise"])
def test_each_intensity_transform_changes_the_image_and_keeps_background_zero(name):
    rng = np.random.default_rng(0)
    img = np.zeros((2, 16, 16, 16), np.float32)
    img[:, 4:12, 4:12, 4:12] = rng.normal(1.0, 0.5, (2, 8, 8, 8))
    out = intensity_transform(img.copy(), np.random.default_rng(3), {f"{name}_prob": 1.0})
    assert out.shape == img.shape and out.dtype == np.float32
    assert not np.allclose(out, img)
    assert not out[img == 0].any()
