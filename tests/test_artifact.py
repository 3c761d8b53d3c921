"""Export round trip: TorchScript + metadata written, verified, reloaded, equal to eager."""

import json

import pytest
import torch

from medseg.errors import ArtifactError
from medseg.export.artifact import load_artifact, write_artifact
from medseg.models.unet import build_unet
from medseg.export.artifact import script_model, weights_sha256

MODEL = {"spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1,
         "norm": "instance", "dropout": 0.0}


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    model = build_unet(MODEL, 4, 4).eval()
    example = torch.randn(1, 4, 16, 16, 16)
    meta = {"input": {"channels": ["a", "b", "c", "d"], "patch_size": [16, 16, 16],
                      "preprocessing": {"channels": ["a", "b", "c", "d"], "target_spacing": [1.0, 1.0, 1.0]}},
            "output": {"labels": {"0": "background", "1": "edema", "2": "ncr", "3": "et"},
                       "regions": {"whole_tumour": [1, 2, 3]}, "num_classes": 4},
            "weights_sha256": weights_sha256(model.state_dict())}
    write_artifact(tmp_path / "art", script_model(model, example), meta)
    return model, tmp_path / "art"


def test_roundtrip_equals_eager_on_other_sizes(exported):
    model, art_dir = exported
    art = load_artifact(art_dir)
    for shape in [(16, 16, 16), (32, 16, 24)]:
        x = torch.randn(2, 4, *shape)
        with torch.no_grad():
            torch.testing.assert_close(art.module(x), model(x), atol=1e-5, rtol=1e-5)
    assert art.patch_size == [16, 16, 16] and art.labels.regions["whole_tumour"] == (1, 2, 3)


def test_metadata_is_embedded_in_the_torchscript_file(exported):
    _, art_dir = exported
    extra = {"metadata.json": ""}
    torch.jit.load(str(art_dir / "model.ts"), _extra_files=extra)
    embedded = json.loads(extra["metadata.json"])
    assert embedded["format"] == "medseg-artifact" and embedded["output"]["num_classes"] == 4


def test_modified_model_is_refused(exported):
    _, art_dir = exported
    raw = bytearray((art_dir / "model.ts").read_bytes())
    raw[-100] ^= 0x01
    (art_dir / "model.ts").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"model\.ts: sha256 differs"):
        load_artifact(art_dir)


def test_edited_metadata_is_refused(exported):
    _, art_dir = exported
    meta = json.loads((art_dir / "metadata.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (art_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="weights hash differs"):
        load_artifact(art_dir)


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not a medseg artifact"):
        load_artifact(tmp_path)
