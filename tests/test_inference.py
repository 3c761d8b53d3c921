"""The one predictor builder: a checkpoint and its exported artifact predict the same labels, and
every inference default comes from ``InferenceConfig``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import Device, InferenceConfig, StitchDtype
from medseg.data.labels import LabelSpec
from medseg.data.planning import estimate_memory_gb
from medseg.data.preprocess import PreprocessSpec
from medseg.errors import ConfigError
from medseg.export.artifact import load_artifact, script_model, write_artifact
from medseg.export.metadata import artifact_metadata
from medseg.inference.build import build_predictor
from medseg.inference.cli import _parser, inference_config
from medseg.inference.predictor import CasePredictor
from medseg.inference.runtime import load_input
from medseg.inference.targets import Target
from medseg.models.checkpoint import CheckpointMeta, save_checkpoint
from medseg.models.memory import inference_window_bytes, training_step_gb
from medseg.models.unet import build_model

MODEL = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "instance",
         "dropout": 0.0, "deep_supervision": False, "deep_supr_num": 1}
CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
CPU = InferenceConfig(device=Device.cpu)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny untrained checkpoint and the artifact exported from it (post-processing 0.25 ml)."""
    root = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    model = build_model(MODEL, len(CHANNELS), 4, inference=True).eval()
    target = Target("labels", LabelSpec())
    plan = {"preprocessing": PreprocessSpec(channels=CHANNELS, target_spacing=(4.0, 4.0, 4.0)).to_json(),
            "labels": LabelSpec().to_json()}
    meta = CheckpointMeta(plan=plan, model=MODEL, patch_size=[16, 16, 16], target=target.to_json(),
                          in_channels=len(CHANNELS), num_classes=4)
    checkpoint = root / "best.pt"
    save_checkpoint(checkpoint, model, meta)
    metadata = artifact_metadata("tiny", meta, model, checkpoint, None, min_component_ml=0.25)
    art = write_artifact(root / "artifact", script_model(model, torch.zeros(1, 4, 16, 16, 16)), metadata)
    return checkpoint, art


def test_checkpoint_and_artifact_predict_identical_labels(exported, tiny_dataset):
    checkpoint, art_dir = exported
    image, affine = load_input(sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[0], len(CHANNELS))
    inference = InferenceConfig(device=Device.cpu, min_component_ml=0.25)
    from_ckpt = build_predictor(inference, checkpoint=checkpoint)
    from_art = build_predictor(inference, artifact=load_artifact(art_dir))
    a, b = from_ckpt(image, affine, name="case"), from_art(image, affine, name="case")
    assert a.label.shape == image.shape[1:] and a.label.any(), "nothing predicted: the comparison would be vacuous"
    np.testing.assert_array_equal(a.label, b.label)
    assert a.max_foreground_prob == pytest.approx(b.max_foreground_prob, abs=1e-5)
    assert from_ckpt.patch_size == from_art.patch_size == (16, 16, 16)
    assert from_ckpt.target == from_art.target


def test_min_component_from_the_artifact_unless_configured(exported):
    checkpoint, art_dir = exported
    art = load_artifact(art_dir)
    assert build_predictor(InferenceConfig(device=Device.cpu, min_component_ml=None), artifact=art
                           ).min_component_ml == 0.25
    assert build_predictor(InferenceConfig(device=Device.cpu, min_component_ml=2.0), artifact=art
                           ).min_component_ml == 2.0
    assert build_predictor(InferenceConfig(device=Device.cpu, min_component_ml=None), checkpoint=checkpoint
                           ).min_component_ml == 0.0


def test_build_predictor_needs_one_model(exported):
    checkpoint, art_dir = exported
    with pytest.raises(ConfigError, match="exactly one"):
        build_predictor(CPU)
    with pytest.raises(ConfigError, match="exactly one"):
        build_predictor(CPU, checkpoint=checkpoint, artifact=load_artifact(art_dir))
    with pytest.raises(ConfigError, match="PyTorch alone"):
        build_predictor(CPU, checkpoint=checkpoint, backend="onnxruntime")


def test_defaults_come_from_inference_config(exported):
    default = InferenceConfig()
    spec = PreprocessSpec(channels=CHANNELS, target_spacing=(4.0, 4.0, 4.0))
    bare = CasePredictor(lambda x: x, spec, (16, 16, 16), Target("labels", LabelSpec()))
    assert bare.overlap == default.overlap and bare.batch_size == default.sw_batch_size
    assert bare.max_memory_gb == default.max_memory_gb and bare.min_component_ml == default.min_component_ml
    assert bare.stitch_dtype == getattr(torch, default.stitch_dtype.value) and bare.flips == []
    built = build_predictor(InferenceConfig(device=Device.cpu, overlap=0.25, sw_batch_size=3, tta_flips=[0, 2],
                                            stitch_dtype=StitchDtype.bfloat16, max_memory_gb=None),
                            checkpoint=exported[0])
    assert (built.overlap, built.batch_size, built.max_memory_gb) == (0.25, 3, None)
    assert built.flips == [(0,), (2,), (0, 2)] and built.stitch_dtype == torch.bfloat16
    args = _parser().parse_args(["ART", "IN", "OUT"])
    assert inference_config(args) == InferenceConfig(min_component_ml=None)  # medseg-predict: the same defaults
    assert args.backend == "torch" and args.pattern == "*.nii.gz" and args.shard is None


def test_medseg_predict_refuses_bad_values_in_one_line():
    with pytest.raises(ConfigError, match="overlap"):
        inference_config(_parser().parse_args(["A", "I", "O", "--overlap", "1.5"]))
    with pytest.raises(ConfigError, match="axes must be 0, 1 or 2"):
        inference_config(_parser().parse_args(["A", "I", "O", "--tta", "0,3"]))


def test_one_memory_model_for_planning_and_inference():
    patch = [64, 64, 64]
    assert training_step_gb(patch, MODEL, 4, 4, 2) == estimate_memory_gb(patch, MODEL, 4, 4, 2)
    one, two = (inference_window_bytes(patch, MODEL, 4, 4, b) for b in (1, 2))
    assert 0 < one < two < training_step_gb(patch, MODEL, 4, 4, 2) * 1024**3  # no gradients at inference
    assert inference_window_bytes(patch, {**MODEL, "num_res_units": 2}, 4, 4, 1) > one
    assert inference_window_bytes(patch, None, 4, 4, 1) > 0  # a bare network: a conservative guess
