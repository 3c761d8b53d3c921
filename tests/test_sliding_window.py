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
