import numpy as np
import torch

from medseg.data.dataset import CachedCase, PatchDataset, extract_patch

AUG = {"flip_prob": 0.5, "intensity_scale_prob": 0.5, "intensity_scale": 0.1, "noise_prob": 0.5, "noise_std": 0.1}


def make_case(shape=(20, 24, 16), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = 3  # a tiny lesion in a corner
    flat = label.ravel()
    fg = {3: np.flatnonzero(flat == 3)}
    return CachedCase("c", image, label, fg)


def test_patches_are_reproducible_per_epoch_and_index():
    ds = PatchDataset([make_case()], (8, 8, 8), 10, 0.5, AUG, seed=1)
    a = [ds[i] for i in range(10)]
    b = [ds[i] for i in range(10)]
    for (x1, y1), (x2, y2) in zip(a, b):
        torch.testing.assert_close(x1, x2)
        torch.testing.assert_close(y1, y2)
    ds.set_epoch(1)
    assert any(not torch.equal(x1, ds[i][0]) for i, (x1, _) in enumerate(a))


def test_foreground_oversampling_finds_small_lesions():
    ds = PatchDataset([make_case()], (8, 8, 8), 50, 1.0, {}, seed=0)
    assert all((ds[i][1] == 3).any() for i in range(50))
    ds = PatchDataset([make_case()], (8, 8, 8), 200, 0.0, {}, seed=0)
    hits = sum(bool((ds[i][1] == 3).any()) for i in range(200))
    assert hits < 100


def test_small_volumes_are_padded():
    case = make_case((5, 6, 7))
    img, lab = extract_patch(case.image, case.label, (0, 0, 0), (8, 8, 8))
    assert img.shape == (2, 8, 8, 8) and lab.shape == (8, 8, 8)
    assert (img[:, 5:] == 0).all()


def test_shapes_and_types():
    ds = PatchDataset([make_case()], (8, 8, 8), 4, 0.5, AUG, seed=0)
    x, y = ds[0]
    assert x.shape == (2, 8, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1, 8, 8, 8) and y.dtype == torch.uint8  # as cached; losses take uint8 labels


def test_typed_augment_config_gives_the_same_patches_as_its_mapping():
    import dataclasses

    import pytest

    from medseg.config import AugmentConfig
    from medseg.errors import MedsegError

    aug = AugmentConfig(rotate_prob=0.0, scale_prob=0.0, blur_prob=0.0, lowres_prob=0.0)
    typed = PatchDataset([make_case()], (8, 8, 8), 4, 0.5, aug, seed=2)
    mapped = PatchDataset([make_case()], (8, 8, 8), 4, 0.5, dataclasses.asdict(aug), seed=2)
    for i in range(4):
        assert all(torch.equal(a, b) for a, b in zip(typed[i], mapped[i]))
    with pytest.raises(MedsegError, match="at least one case"):
        PatchDataset([], (8, 8, 8), 4, 0.5, aug, seed=0)
