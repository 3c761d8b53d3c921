from pathlib import Path

import pytest
import torch
import yaml
from monai.networks.nets import UNet

from medseg.errors import ConfigError
from medseg.models.unet import activation_types, build_unet, check_relu_only

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_is_relu_only(path):
    cfg = yaml.safe_load(path.read_text())
    model = build_unet(cfg, in_channels=4, out_channels=4)
    assert activation_types(model) == {torch.nn.ReLU}


@pytest.mark.parametrize("dims,res,norm", [(2, 0, "batch"), (2, 2, "instance"), (3, 1, "batch")])
def test_variants_are_relu_only_and_run(dims, res, norm):
    cfg = {"spatial_dims": dims, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": res,
           "norm": norm, "dropout": 0.1}
    model = build_unet(cfg, 2, 3)
    assert activation_types(model) == {torch.nn.ReLU}
    out = model(torch.zeros(2, 2, *([16] * dims)))
    assert out.shape == (2, 3, *([16] * dims))


def test_check_catches_prelu():
    """MONAI's default is PReLU: the guard must notice it."""
    monai_default = UNet(3, 1, 2, (4, 8), (2,))
    assert torch.nn.PReLU in activation_types(monai_default)
    with pytest.raises(ConfigError, match="PReLU"):
        check_relu_only(monai_default)


def test_bad_model_config():
    with pytest.raises(ConfigError, match="one entry fewer"):
        build_unet({"spatial_dims": 3, "channels": [4, 8], "strides": [2, 2], "norm": "instance"}, 1, 2)


def test_slicewise_2d_model_matches_per_slice_calls():
    from medseg.models.unet import build_model

    cfg = {"spatial_dims": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "batch",
           "dropout": 0.0}
    model = build_model(cfg, 2, 3).eval()
    x = torch.randn(2, 2, 8, 8, 3)
    with torch.no_grad():
        out = model(x)
        for z in range(3):
            torch.testing.assert_close(out[..., z], model.net(x[..., z]))
    assert activation_types(model) == {torch.nn.ReLU}
