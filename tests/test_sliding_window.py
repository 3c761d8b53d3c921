import numpy as np
import pytest
import torch

from medseg.inference.sliding_window import flip_sets, sliding_window_probs, window_starts


def pointwise_net():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, kernel_size=1)
    return lambda x: conv(x)


def test_windows_cover_the_volume():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]
    assert window_starts(3, 4, 0.5) == [0]


@pytest.mark.parametrize("shape", [(20, 17, 9), (5, 6, 7)])
def test_blending_is_exact_for_a_pointwise_network(shape):
    net = pointwise_net()
    image = torch.randn(2, *shape)
    expected = torch.softmax(net(image[None]), 1)[0]
    with torch.no_grad():
        got = sliding_window_probs(net, image, (8, 8, 8), 3, overlap=0.5, batch_size=3)
    assert got.shape == (3, *shape)
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)


def test_flip_tta_is_exact_for_an_equivariant_network():
    net = pointwise_net()
    image = torch.randn(2, 12, 12, 12)
    with torch.no_grad():
        a = sliding_window_probs(net, image, (8, 8, 8), 3, overlap=0.25)
        b = sliding_window_probs(net, image, (8, 8, 8), 3, overlap=0.25, tta_flips=flip_sets([0, 1, 2]))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(flip_sets([0, 1, 2])) == 7
    np.testing.assert_allclose(b.sum(0).numpy(), 1.0, atol=1e-5)


def test_remove_small_components_by_volume():
    from medseg.inference.predictor import remove_small_components

    label = np.zeros((20, 20, 20), np.uint8)
    label[2:4, 2:4, 2:4] = 1      # 8 voxels of 8 mm^3 = 0.064 ml
    label[10:16, 10:16, 10:16] = 2  # 216 voxels = 1.728 ml
    label[12, 12, 12] = 3
    out = remove_small_components(label, (2.0, 2.0, 2.0), 0.1)
    assert not out[2:4, 2:4, 2:4].any()
    np.testing.assert_array_equal(out[10:16, 10:16, 10:16], label[10:16, 10:16, 10:16])
    np.testing.assert_array_equal(remove_small_components(label, (2.0, 2.0, 2.0), 0.0), label)
    np.testing.assert_array_equal(remove_small_components(label, (1.0, 1.0, 1.0), 0.005), label)


@pytest.mark.parametrize("ndim", [2, 3])
def test_small_components_in_the_tumour_box_equal_labelling_the_whole_grid(ndim):
    """Labelling only the foreground's bounding box removes exactly what labelling the whole grid
    removes (scattered random components, single voxels and dilated clusters, 26-/8-connectivity;
    one trial with all of them away from the grid's first rows and last slices, so the box is offset)."""
    from scipy import ndimage

    from medseg.inference.predictor import remove_small_components

    rng = np.random.default_rng(ndim)
    shape = (40, 36, 30)[:ndim]
    for trial in range(4):
        label = ((rng.random(shape) < 0.03) * rng.integers(1, 4, shape)).astype(np.uint8)
        label = ndimage.maximum_filter(label, size=(2,) * ndim) if trial % 2 else label
        if trial == 3:  # components confined to an interior box
            label[:5] = 0
            label[..., -4:] = 0
        components, _ = ndimage.label(label > 0, structure=np.ones((3,) * ndim))
        sizes = np.bincount(components.ravel()) * 2.0**ndim / 1000.0
        small = sizes < 0.02
        small[0] = False
        expected = label.copy()
        expected[small[components]] = 0
        got = remove_small_components(label, (2.0,) * ndim, 0.02)
        np.testing.assert_array_equal(got, expected)
        assert got is not label
    empty = np.zeros(shape, np.uint8)
    np.testing.assert_array_equal(remove_small_components(empty, (1.0,) * ndim, 1.0), empty)


def test_channel_argmax_equals_torch_argmax_ties_included():
    from medseg.data.preprocess import channel_argmax

    rng = np.random.default_rng(0)
    for k in (1, 2, 4, 7):
        probs = torch.from_numpy(rng.integers(0, 4, (k, 9, 8, 7)).astype(np.float32))  # many ties
        expected = probs.argmax(dim=0).to(torch.uint8)
        got = channel_argmax(probs)
        assert got.dtype == torch.uint8
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        soft = torch.softmax(torch.from_numpy(rng.normal(size=(k, 6, 5, 4)).astype(np.float32)), 0)
        torch.testing.assert_close(channel_argmax(soft), soft.argmax(dim=0).to(torch.uint8), rtol=0, atol=0)
