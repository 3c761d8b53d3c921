"""The fused Dice + CE losses equal MONAI's DiceLoss plus torch's cross-entropy, value and gradient."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from medseg.data.labels import LabelSpec
from medseg.engine.losses import SegmentationLoss
from medseg.inference.targets import Target


def _reference(target: Target, logits: torch.Tensor, label: torch.Tensor, dice_w: float, ce_w: float) -> torch.Tensor:
    """The loss composed from MONAI and torch modules (what the fused version replaces)."""
    if target.mode == "regions":
        encoded = torch.stack([torch.isin(label[:, 0].long(), torch.tensor(c)) for c in target.labels.regions.values()],
                              dim=1).to(logits.dtype)
        dice = DiceLoss(include_background=True, sigmoid=True, batch=True)(logits, encoded)
        return dice_w * dice + ce_w * torch.nn.BCEWithLogitsLoss()(logits, encoded)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, label.long())
    return dice_w * dice + ce_w * torch.nn.CrossEntropyLoss()(logits, label[:, 0].long())


def _label(shape: tuple[int, ...], seed: int, absent: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 4, shape, generator=g, dtype=torch.uint8)
    if absent is not None:
        lab[lab == absent] = 0
    return lab


@pytest.mark.parametrize("mode", ["labels", "regions"])
@pytest.mark.parametrize("absent", [None, 3])  # a class missing from the whole batch
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.7, 2.0)])
def test_fused_dice_ce_equals_monai_and_torch(mode, absent, weights):
    target = Target(mode, LabelSpec())
    label = _label((2, 1, 9, 7, 5), seed=1, absent=absent)
    g = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(2, target.channels, 9, 7, 5, generator=g, dtype=torch.float64)).requires_grad_()
    got = SegmentationLoss(target, "dice_ce", *weights)(logits, label)
    (grad_got,) = torch.autograd.grad(got, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = _reference(target, ref_logits, label, *weights)
    (grad_ref,) = torch.autograd.grad(ref, ref_logits)
    assert got.dtype == torch.float64
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad_got, grad_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["labels", "regions"])
def test_fused_loss_gradcheck_and_float32(mode):
    """Numerical gradient check in float64; float32 (what training uses) agrees with the reference."""
    target = Target(mode, LabelSpec())
    label = _label((1, 1, 4, 3, 3), seed=3)
    loss = SegmentationLoss(target, "dice_ce")
    x = torch.randn(1, target.channels, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: loss(t, label), (x,))
    x32 = (2 * torch.randn(2, target.channels, 16, 16, 16)).requires_grad_()
    lab32 = _label((2, 1, 16, 16, 16), seed=4)
    got = loss(x32, lab32)
    (g_got,) = torch.autograd.grad(got, x32)
    x_ref = x32.detach().clone().requires_grad_()
    ref = _reference(target, x_ref, lab32, 1.0, 1.0)
    (g_ref,) = torch.autograd.grad(ref, x_ref)
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-8)


def test_deep_supervision_weights_and_2d():
    """(B, S, K, ...) outputs: weights 1, 1/2, 1/4 normalised; 2D inputs work the same."""
    target = Target("labels", LabelSpec())
    loss = SegmentationLoss(target)
    label = _label((2, 1, 8, 8), seed=5)
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    expected = sum(w * _reference(target, x[:, i], label, 1.0, 1.0) for i, w in enumerate([4 / 7, 2 / 7, 1 / 7]))
    assert float(loss(x, label)) == pytest.approx(float(expected), rel=1e-12)


def test_region_encoding_from_uint8_labels():
    target = Target("regions", LabelSpec())
    label = torch.tensor([0, 1, 2, 3], dtype=torch.uint8).view(1, 1, 4)
    enc = target.encode(label)
    # MSD Task01: whole = {1, 2, 3}, core = {2, 3}, enhancing = {3}
    assert enc[0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
