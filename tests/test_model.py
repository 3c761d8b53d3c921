import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from monai.networks.nets import UNet
from omegaconf import OmegaConf

from medseg.config import ModelConfig
from medseg.errors import ConfigError
from medseg.models.unet import activation_types, build_unet, check_relu_only

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_every_model_config_is_relu_only(path, deep_supervision):
    group = OmegaConf.merge(OmegaConf.structured(ModelConfig), yaml.safe_load(path.read_text()) or {})
    cfg = dataclasses.replace(OmegaConf.to_object(group), deep_supervision=deep_supervision)
    model = build_unet(cfg, in_channels=4, out_channels=4)
    assert activation_types(model) == {torch.nn.ReLU}


@pytest.mark.parametrize("dims", [2, 3])
def test_deep_supervision_outputs_and_export_model(dims):
    from medseg.models.unet import build_model, load_weights

    cfg = {"spatial_dims": dims, "channels": [4, 8, 16, 32], "strides": [2, 2, 2], "num_res_units": 0,
           "norm": "instance", "dropout": 0.0, "deep_supervision": True, "deep_supr_num": 2}
    model = build_model(cfg, 2, 3)
    x = torch.randn(1, 2, 16, 16, 16 if dims == 3 else 2)
    model.train()
    assert model(x).shape == (1, 3, 3, *x.shape[2:])  # full resolution + 2 supervised levels
    model.eval()
    with torch.no_grad():
        full = model(x)
    assert full.shape == (1, 3, *x.shape[2:])
    plain = build_model(cfg, 2, 3, inference=True).eval()
    load_weights(plain, model.state_dict())
    scripted = torch.jit.script(plain)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), full)


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
