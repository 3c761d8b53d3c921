"""Augmentation: reproducible from the RNG, image and label stay aligned under spatial transforms,
the background stays zero, 2D patches keep their single slice."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import ndimage

from medseg.data.augment import intensity_transform, sample_patch, spatial_transform
from medseg.data.dataset import augment_patch, extract_patch

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
    np.testing.assert_array_equal(out_lab, np.rint(out_lab))


def _volume(shape=(23, 19, 17), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(2, *shape)).astype(np.float32)
    lab = rng.integers(0, 4, shape).astype(np.uint8)
    return img, lab


@pytest.mark.parametrize("start", [(3, 2, 1), (-4, 10, 9), (15, -3, -5)])
def test_identity_sampling_equals_a_crop_with_zeros_outside(start):
    img, lab = _volume()
    patch = (12, 12, 12)
    centre = np.asarray(start) + (np.asarray(patch) - 1) / 2
    got_img, got_lab = sample_patch(img, lab, centre, patch, np.eye(3))
    ref_img, ref_lab = extract_patch(img, lab, start, patch)
    np.testing.assert_allclose(got_img, ref_img, atol=1e-5)
    np.testing.assert_array_equal(got_lab, ref_lab)
    assert got_lab.dtype == np.uint8


def test_quarter_turn_is_exact_and_rotation_matches_scipy():
    img, lab = _volume()
    patch = (11, 11, 11)
    centre = np.array([11.0, 9.0, 8.0])
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # about axis 2
    out_img, out_lab = sample_patch(img, lab, centre, patch, turn)
    crop = tuple(slice(int(c) - 5, int(c) + 6) for c in centre)
    # out[o] = vol[c + turn @ o]: out[i, j, k] = crop[5 - (j - 5), 5 + (i - 5), k]
    expect_lab = np.transpose(lab[crop][::-1, :, :], (1, 0, 2))
    np.testing.assert_array_equal(out_lab, expect_lab)
    np.testing.assert_allclose(out_img[0], np.transpose(img[0][crop][::-1, :, :], (1, 0, 2)), atol=1e-5)
    # a general rotation + scaling: trilinear equals scipy's order-1 affine transform in the interior
    a = np.deg2rad(23.0)
    m = 0.9 * np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    out_img, _ = sample_patch(img, lab, centre, patch, m)
    offset = centre - m @ ((np.asarray(patch) - 1) / 2)
    ref = ndimage.affine_transform(img[0].astype(np.float64), m, offset=offset, output_shape=patch, order=1)
    np.testing.assert_allclose(out_img[0][2:-2, 2:-2, 2:-2], ref[2:-2, 2:-2, 2:-2], atol=1e-4)


def test_patch_outside_the_volume_is_zero():
    img, lab = _volume()
    out_img, out_lab = sample_patch(img, lab, (100.0, 5.0, 5.0), (8, 8, 8), np.eye(3))
    assert not out_img.any() and not out_lab.any() and out_img.shape == (2, 8, 8, 8)


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


def test_sampling_is_identical_whatever_the_number_of_threads():
    """The output grid is cut into per-thread slabs; the patch must not depend on how many."""
    import torch

    img, lab = _volume((40, 36, 30), seed=2)
    lab[10:20, 10:20, 10:20] = 3
    a = np.deg2rad(17.0)
    m = 1.1 * np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            outs.append(sample_patch(img, lab, (19.5, 17.5, 14.5), (16, 16, 16), m))
    finally:
        torch.set_num_threads(threads)
    for out_img, out_lab in outs[1:]:
        np.testing.assert_array_equal(out_img, outs[0][0])
        np.testing.assert_array_equal(out_lab, outs[0][1])
    assert outs[0][1].any()


def test_blur_in_forked_loader_workers_after_the_parent_used_it():
    """The per-channel blur pool is per process: a forked worker must not wait on the parent's threads."""
    import torch
    from torch.utils.data import DataLoader

    from medseg.data.dataset import CachedCase, PatchDataset

    img, lab = _volume((20, 20, 20), seed=4)
    intensity_transform(img.copy(), np.random.default_rng(0), {"blur_prob": 1.0})  # the parent's pool
    case = CachedCase("c", img, lab, {})
    ds = PatchDataset([case], (8, 8, 8), 4, 0.0, {"blur_prob": 1.0}, seed=0)
    loader = DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="fork", timeout=60)
    batches = list(loader)
    assert len(batches) == 2
    torch.testing.assert_close(batches[0][0][0], ds[0][0])  # same patch as in the parent


def test_channel_dropout_zeroes_one_to_max_channels_never_all():
    from medseg.data.augment import channel_dropout

    counts = set()
    for seed in range(200):
        img = np.ones((4, 4, 4, 4), np.float32)
        out = channel_dropout(img, np.random.default_rng(seed), {"channel_dropout_prob": 1.0,
                                                                 "channel_dropout_max": 5})
        zeroed = [c for c in range(4) if not out[c].any()]
        assert 1 <= len(zeroed) <= 3 and all(out[c].all() for c in range(4) if c not in zeroed)
        counts.add(len(zeroed))
    assert counts == {1, 2, 3}
    single = np.ones((1, 4, 4, 4), np.float32)
    assert channel_dropout(single, np.random.default_rng(0), {"channel_dropout_prob": 1.0}).all()


def test_channel_dropout_off_draws_nothing_and_its_share_is_the_probability():
    from medseg.data.augment import channel_dropout

    rng = np.random.default_rng(1)
    channel_dropout(np.ones((4, 2, 2, 2), np.float32), rng, {"channel_dropout_prob": 0.0})
    assert rng.random() == np.random.default_rng(1).random()  # the patch stream is unchanged when off
    rng = np.random.default_rng(2)
    hit = sum(not channel_dropout(np.ones((4, 2, 2, 2), np.float32), rng, {"channel_dropout_prob": 0.3}).all()
              for _ in range(2000))
    assert 0.26 < hit / 2000 < 0.34


def test_accepted_subsets_follow_the_dropout_settings():
    from medseg.config import AugmentConfig
    from medseg.data.augment import accepted_subsets

    channels = ["FLAIR", "T1w", "t1gd", "T2w"]
    assert accepted_subsets(channels, AugmentConfig(channel_dropout_prob=0.0)) == [channels]  # off
    assert accepted_subsets(channels, AugmentConfig()) == accepted_subsets(channels, {"channel_dropout_prob": 0.5})
    assert accepted_subsets(["FLAIR"], AugmentConfig()) == [["FLAIR"]]  # one channel: nothing to drop
    one = accepted_subsets(channels, AugmentConfig(channel_dropout_prob=0.5))
    assert one[0] == channels and len(one) == 5 and ["FLAIR", "T1w", "T2w"] in one
    assert len(accepted_subsets(channels, {"channel_dropout_prob": 0.5, "channel_dropout_max": 9})) == 1 + 4 + 6 + 4
    with pytest.raises(ValueError, match="channel_dropout_prob"):
        AugmentConfig(channel_dropout_prob=1.5)


def test_patch_dataset_applies_dropout_after_intensity_augmentation():
    from medseg.data.dataset import CachedCase, PatchDataset

    img = np.ones((4, 12, 12, 12), np.float32)
    lab = np.zeros((12, 12, 12), np.uint8)
    ds = PatchDataset([CachedCase("c", img, lab, {})], (8, 8, 8), 20, 0.0,
                      {"channel_dropout_prob": 1.0, "channel_dropout_max": 2, "intensity_shift_prob": 1.0}, seed=0)
    for i in range(20):
        patch = ds[i][0].numpy()
        zeroed = [c for c in range(4) if not patch[c].any()]
        assert 1 <= len(zeroed) <= 2
