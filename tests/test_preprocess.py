import numpy as np
import pytest
import torch

from medseg.data.preprocess import Geometry, PreprocessSpec, preprocess, restore
from medseg.data.synthetic import SynthConfig, generate_case
from medseg.errors import ConfigError, DataError

SPEC = PreprocessSpec(channels=("FLAIR", "T1w", "t1gd", "T2w"), target_spacing=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def case():
    return generate_case(5, True, SynthConfig(spacing=2.5))


def test_normalised_over_nonzero(case):
    image, label, geom = preprocess(np.moveaxis(case.image, -1, 0), case.affine, SPEC, case.label)
    for c in range(4):
        vals = image[c][image[c] != 0]
        assert abs(vals.mean()) < 0.05 and abs(vals.std() - 1) < 0.05
    assert label.shape == image.shape[1:] and label.dtype == np.uint8
    np.testing.assert_allclose(geom.spacing, SPEC.target_spacing, rtol=0.05)


def test_restore_returns_the_source_grid(case):
    image, label, geom = preprocess(np.moveaxis(case.image, -1, 0), case.affine, SPEC, case.label)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(label).long(), 4).permute(3, 0, 1, 2).float()
    back = restore(onehot, geom)
    assert back.shape == case.label.shape
    wt_ref, wt_back = case.label > 0, back > 0
    dice = 2 * (wt_ref & wt_back).sum() / (wt_ref.sum() + wt_back.sum())
    assert dice > 0.9


def test_preprocessed_affine_maps_to_same_world_point(case):
    """A voxel of the preprocessed grid and the source voxel at the same world point agree."""
    spec = PreprocessSpec(channels=SPEC.channels, target_spacing=tuple(np.linalg.norm(case.affine[:3, :3], axis=0)),
                          normalization="none", crop_foreground=True)
    image, _, geom = preprocess(np.moveaxis(case.image, -1, 0), case.affine, spec)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ijk = np.array([rng.integers(s) for s in image.shape[1:]])
        world = geom.affine @ np.array([*ijk, 1.0])
        src = np.linalg.solve(case.affine, world)[:3]
        src_i = tuple(np.round(src).astype(int))
        if all(0 <= s < n for s, n in zip(src_i, case.label.shape)):
            np.testing.assert_allclose(image[0][tuple(ijk)], case.image[src_i][0], rtol=1e-4, atol=1e-2)


def test_geometry_json_roundtrip(case):
    _, _, geom = preprocess(np.moveaxis(case.image, -1, 0), case.affine, SPEC)
    back = Geometry.from_json(geom.to_json())
    np.testing.assert_allclose(back.affine, geom.affine)
    assert back.crop == geom.crop and back.shape == geom.shape


def test_empty_image_refused():
    with pytest.raises(DataError, match="every voxel is zero"):
        preprocess(np.zeros((4, 5, 5, 5), np.float32), np.eye(4), SPEC, name="case7")


def test_wrong_channel_count_refused():
    with pytest.raises(DataError, match=r"case7: expected image \(C=4"):
        preprocess(np.ones((3, 5, 5, 5), np.float32), np.eye(4), SPEC, name="case7")


def test_bad_spec_refused():
    with pytest.raises(ConfigError):
        PreprocessSpec(channels=("a",), target_spacing=(1.0, 0.0, 1.0))
