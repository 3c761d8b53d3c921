"""Reduced-precision stitching keeps the probabilities within fp16 resolution of fp32 stitching."""

import torch

from medseg.inference.sliding_window import sliding_window_probs


def test_fp16_stitching_matches_fp32_closely():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)

    def net(x):
        with torch.no_grad():
            return conv(x)

    image = torch.randn(2, 40, 36, 30)
    full = sliding_window_probs(net, image, (16, 16, 16), 3, overlap=0.5)
    half = sliding_window_probs(net, image, (16, 16, 16), 3, overlap=0.5, stitch_dtype=torch.float16)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert (half - full).abs().max() < 5e-3
    assert (half.argmax(0) == full.argmax(0)).float().mean() > 0.999
