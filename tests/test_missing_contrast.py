"""Cases with a missing contrast (issue 15, item 3): the accepted-subsets policy, channel dropout
recorded in the checkpoint and the artifact, ``predict`` on a BraTS folder without a file and a
DICOM study without a series, ``evaluate.drop_channels``."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, run_medseg
from medseg.config import DataConfig, MedsegConfig, PredictConfig, SourceKind
from medseg.data.labels import LabelSpec
from medseg.data.preprocess import PreprocessSpec
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_brats_dataset, write_dicom_dataset
from medseg.errors import ConfigError, PartialFailure
from medseg.export.artifact import script_model, write_artifact
from medseg.export.metadata import artifact_metadata
from medseg.inference.missing import missing_channel_policy
from medseg.inference.targets import Target
from medseg.models.checkpoint import CheckpointMeta, save_checkpoint
from medseg.models.unet import build_model
from medseg.stages.evaluate import dropped_channels
from medseg.stages.predict import predict

MODEL = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "instance",
         "dropout": 0.0, "deep_supervision": False, "deep_supr_num": 1}
CHANNELS = ["FLAIR", "T1w", "t1gd", "T2w"]
ONE_MISSING = [CHANNELS] + [[c for c in CHANNELS if c != d] for d in CHANNELS]
DATA = SynthConfig(n=2, n_test=0, spacing=12.0, fov_mm=(96.0, 108.0, 84.0), seed=2, tumour_free_fraction=0.0)


def _meta(subsets: list[list[str]]) -> dict:
    return {"input": {"channels": CHANNELS, "accepted_subsets": subsets}}


def test_policy_accepts_trained_subsets_and_refuses_others_in_one_line():
    assert missing_channel_policy(_meta(ONE_MISSING), CHANNELS).missing == ()
    ok = missing_channel_policy(_meta(ONE_MISSING), ["FLAIR", "T1w", "T2w"])
    assert ok.accepted and ok.missing == ("t1gd",) and ok.message is None
    two = missing_channel_policy(_meta(ONE_MISSING), ["FLAIR", "T2w"])
    assert not two.accepted and two.missing == ("T1w", "t1gd")
    assert two.message.startswith("lacks the contrasts T1w, t1gd; this model was trained only for cases missing ")
    assert "FLAIR or T1w or T2w or t1gd" in two.message and "\n" not in two.message
    full_only = missing_channel_policy({"input": {"channels": CHANNELS}}, ["FLAIR", "T1w", "T2w"])
    assert full_only.message == ("lacks the contrast t1gd; this model was trained only for cases with every "
                                 "contrast (input.accepted_subsets)")


def test_drop_channels_are_checked_against_the_data():
    assert dropped_channels(["T2w", "FLAIR"], CHANNELS) == ["FLAIR", "T2w"]
    with pytest.raises(ConfigError, match=r"\['T3'\] are not channels of the prepared data; valid"):
        dropped_channels(["T3"], CHANNELS)
    with pytest.raises(ConfigError, match="drops every channel"):
        dropped_channels(CHANNELS, CHANNELS)


def _artifact(root: Path, subsets: list[list[str]]) -> Path:
    """A tiny untrained artifact whose checkpoint records ``subsets`` (empty: full set only)."""
    torch.manual_seed(0)
    model = build_model(MODEL, 4, 4, inference=True).eval()
    plan = {"preprocessing": PreprocessSpec(channels=tuple(CHANNELS), target_spacing=(8.0, 8.0, 8.0)).to_json()}
    meta = CheckpointMeta(plan=plan, model=MODEL, patch_size=[16, 16, 16],
                          target=Target("labels", LabelSpec()).to_json(), in_channels=4, num_classes=4,
                          accepted_subsets=subsets)
    save_checkpoint(root / "best.pt", model, meta)
    metadata = artifact_metadata("tiny", meta, model, root / "best.pt", None, min_component_ml=0.0)
    return write_artifact(root / "artifact", script_model(model, torch.zeros(1, 4, 16, 16, 16)), metadata)


def _cfg(source: SourceKind) -> MedsegConfig:
    return MedsegConfig(data=DataConfig(source=source, convention="auto" if source == SourceKind.brats else "msd"),
                        predict=replace(PredictConfig(), skip_existing=False, dicom_seg=False))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("missing")
    (root / "dropout").mkdir()
    (root / "full").mkdir()
    return {"dropout": _artifact(root / "dropout", ONE_MISSING), "full": _artifact(root / "full", [])}


def test_artifact_records_the_accepted_subsets(artifacts):
    meta = json.loads((artifacts["dropout"] / "metadata.json").read_text())
    assert meta["input"]["accepted_subsets"] == ONE_MISSING
    assert json.loads((artifacts["full"] / "metadata.json").read_text())["input"]["accepted_subsets"] == [CHANNELS]


def test_predict_a_brats_folder_without_one_file(artifacts, tmp_path):
    root = write_brats_dataset(tmp_path / "brats", DATA, release="brats2023", workers=1)
    lacking = sorted(root.iterdir())[0]
    next(lacking.glob("*-t1c.nii.gz")).unlink()
    out = tmp_path / "out"
    out.mkdir()
    summary = predict(_cfg(SourceKind.brats), artifacts["dropout"], root, out, source="data")
    assert summary["n_ok"] == 2
    cases = {c["case"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert cases[lacking.name]["missing_channels"] == ["t1gd"]
    assert all("missing_channels" not in c for n, c in cases.items() if n != lacking.name)
    out2 = tmp_path / "out2"
    out2.mkdir()
    with pytest.raises(PartialFailure) as err:
        predict(_cfg(SourceKind.brats), artifacts["full"], root, out2, source="data")
    failed = next(c for c in json.loads((out2 / "predictions.json").read_text())["cases"] if c["status"] == "failed")
    assert failed["case"] == lacking.name and failed["missing_channels"] == ["t1gd"]
    assert f"case {lacking.name} lacks the contrast t1gd; this model was trained only for cases with every" \
           in failed["error"]
    assert str(lacking) in failed["error"] and "\n" not in str(err.value)
    assert not (out2 / f"{lacking.name}.nii.gz").exists()


def test_predict_a_dicom_study_without_one_series_records_the_reasons(artifacts, tmp_path):
    root = write_dicom_dataset(tmp_path / "dcm", DATA, workers=1, styles=("siemens", "none"))
    shutil.rmtree(next((root / "dicom" / "SUBJ002").glob("*/SE005")))  # no T2
    out = tmp_path / "out"
    out.mkdir()
    predict(_cfg(SourceKind.dicom), artifacts["dropout"], root, out, source="data")
    cases = {c["case"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    assert cases["SUBJ002"]["missing_channels"] == ["T2w"] and cases["SUBJ002"]["status"] == "ok"
    assert set(cases["SUBJ002"]["contrasts"]) == {"FLAIR", "T1w", "t1gd"}
    assert "ContrastBolusAgent 'Gadobutrol'" in " ".join(cases["SUBJ001"]["contrasts"]["t1gd"]["reasons"])
    import nibabel as nib

    flair_grid = nib.load(root / "labels" / "SUBJ002.nii.gz")  # the labels are on the FLAIR grid
    assert nib.load(out / "SUBJ002.nii.gz").shape == flair_grid.shape


def test_missing_channels_are_zero_in_what_the_predictor_gets(artifacts, tmp_path):
    from medseg.inference.datasets import dataset_inputs

    root = write_brats_dataset(tmp_path / "brats", DATA, release="brats2021", workers=1)
    lacking = sorted(root.iterdir())[1]
    next(lacking.glob("*_flair.nii.gz")).unlink()
    items, _ = dataset_inputs(_cfg(SourceKind.brats).data, root, CHANNELS)
    item = next(i for i in items if i.name == lacking.name)
    image, _, _ = item.load()
    assert item.missing_channels == ("FLAIR",) and not image[0].any() and all(image[c].any() for c in (1, 2, 3))


@pytest.mark.slow
def test_dropout_training_export_and_drop_channels_evaluation(tiny_dataset, tmp_path):
    """``medseg run`` with channel dropout: the checkpoint and artifact record the accepted subsets,
    and ``evaluate.drop_channels`` scores one missing-contrast pattern, stated in the report."""
    proc = run_medseg(["run", f"data.root={tiny_dataset}", "hydra.run.dir=out", *TINY,
                       "train.augment.channel_dropout_prob=0.5", "train.augment.channel_dropout_max=2",
                       "evaluate.drop_channels=[t1gd]"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    meta = json.loads((out / "export" / "artifact" / "metadata.json").read_text())
    assert len(meta["input"]["accepted_subsets"]) == 1 + 4 + 6
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["missing_channels"] == "t1gd"
    assert "Missing-contrast pattern: without t1gd" in (out / "evaluate" / "report.md").read_text()
    assert np.isfinite(metrics["summary"]["whole_tumour"]["dice"]["mean"])
