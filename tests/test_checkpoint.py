"""Checkpoints: save -> load round trip, the on-disk format, old checkpoints, errors naming the file,
and the model config adapter (typed schema or plain mapping)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from medseg.config import ModelConfig, Norm
from medseg.errors import DataError
from medseg.models.checkpoint import CheckpointMeta, load_checkpoint, model_from_checkpoint, save_checkpoint
from medseg.models.unet import as_model_config, build_model, model_to_dict

MODEL = ModelConfig(spatial_dims=3, channels=[4, 8], strides=[2], num_res_units=0, norm=Norm.instance)


def _meta(**changes: object) -> CheckpointMeta:
    meta = CheckpointMeta(plan={"patch_size": [16, 16, 16]}, model=model_to_dict(MODEL), patch_size=[16, 16, 16],
                          target={"mode": "labels"}, in_channels=2, num_classes=3, fold=1,
                          validation_cases=["a", "b"], epoch=4, iteration=40, val={"tumour": 0.5}, best_metric=0.5)
    return dataclasses.replace(meta, **changes)


def test_round_trip_and_on_disk_format(tmp_path):
    torch.manual_seed(0)
    model = build_model(MODEL, 2, 3)
    save_checkpoint(tmp_path / "c.pt", model, _meta())
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert set(raw) == {"model", "meta"} and raw["meta"]["model"]["norm"] == "instance"
    weights, meta = load_checkpoint(tmp_path / "c.pt")
    assert meta == _meta()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    net, meta = model_from_checkpoint(tmp_path / "c.pt")
    assert not net.training and meta.fold == 1
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.eval()(x))


def test_an_old_checkpoint_without_the_newer_keys_loads(tmp_path):
    model = build_model(MODEL, 2, 3)
    old_meta = {"plan": {}, "model": {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0,
                                      "norm": "instance", "dropout": 0.0},
                "patch_size": [16, 16, 16], "in_channels": 2, "num_classes": 3, "epoch": 2, "unknown": 1}
    torch.save({"model": model.state_dict(), "meta": old_meta}, tmp_path / "old.pt")
    _, meta = load_checkpoint(tmp_path / "old.pt")
    assert meta.target == {} and meta.validation_cases == [] and meta.best_metric is None and meta.epoch == 2
    net, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("content,problem", [
    (None, "checkpoint not found"),
    (b"not a torch file", "not a readable medseg checkpoint"),
    ({"weights": {}}, "keys 'model' and 'meta' missing"),
    ({"model": {}, "meta": {"plan": {}}}, "invalid checkpoint metadata"),
])
def test_bad_checkpoints_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(DataError, match=problem) as err:
        load_checkpoint(path)
    assert err.value.path == path


def test_weights_of_another_model_are_refused(tmp_path):
    other = build_model(dataclasses.replace(MODEL, channels=[4, 16]), 2, 3)
    save_checkpoint(tmp_path / "c.pt", other.state_dict(), _meta())
    with pytest.raises(DataError, match="does not match the model"):
        model_from_checkpoint(tmp_path / "c.pt")


def test_model_config_adapter_takes_the_schema_or_a_mapping():
    as_dict = model_to_dict(MODEL)
    assert as_model_config(as_dict) == MODEL and as_model_config(MODEL) is MODEL
    assert as_model_config({"spatial_dims": 2, "norm": "BATCH"}) == ModelConfig(spatial_dims=2, norm=Norm.batch)
    torch.manual_seed(0)
    a = build_model(MODEL, 2, 3)
    torch.manual_seed(0)
    b = build_model(as_dict, 2, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
