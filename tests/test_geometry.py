"""Geometry round trip: predictions land on the exact input grid (shape and affine), for NIfTI and
DICOM-derived volumes, and the 2D X-ray path runs end to end with ``experiment=xray_demo``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from conftest import run_medseg
from medseg.data.io.nifti import write_nifti
from medseg.data.preprocess import PreprocessSpec
from medseg.data.sources import make_source
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_dicom_dataset
from medseg.inference.predictor import CasePredictor, torch_network
from medseg.inference.targets import Target
from medseg.models.unet import build_model


def test_dicom_prediction_is_written_on_the_dicom_grid(tmp_path):
    root = write_dicom_dataset(tmp_path / "dcm", SynthConfig(n=2, spacing=6.0, seed=4), workers=1)
    src = make_source("dicom", str(root))
    torch.manual_seed(0)
    model = build_model({"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0,
                         "norm": "instance", "dropout": 0.0}, 4, 4).eval()
    spec = PreprocessSpec(channels=src.channels, target_spacing=(4.0, 5.0, 7.0))
    predictor = CasePredictor(torch_network(model, torch.device("cpu")), spec, (16, 16, 16),
                              Target("labels", src.labels))
    for ref in src.cases():  # one case has a sagittal T2 resampled onto the FLAIR grid
        case = src.load(ref)
        pred = predictor(case.image, case.affine, name=ref.name)
        assert pred.label.shape == case.image.shape[1:]
        out = write_nifti(tmp_path / f"{ref.name}.nii.gz", pred.label, case.affine)
        img = nib.load(out)
        assert img.shape == case.image.shape[1:]
        np.testing.assert_allclose(img.affine, case.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(img.dataobj), pred.label)


def test_xray_demo_runs_end_to_end(tmp_path):
    proc = run_medseg(["run", "experiment=xray_demo", "synth.n=8", "synth.spacing=4.0", "train.max_epochs=2",
                       "train.iters_per_epoch=2", "train.batch_size=2", "train.progress=false",
                       "model.channels=[8,16,32]", "model.strides=[2,2]", "evaluate.n_figures=1",
                       "data.workers=1", "hydra.run.dir=out"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    plan = json.loads((out / "prepare" / "plan.json").read_text())
    assert plan["two_dimensional"] and plan["labels"]["regions"] == {"lesion": [1]}
    assert len(plan["patch_size"]) == 2
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert set(metrics["summary"]) >= {"lesion"}
    preds = json.loads((out / "predict" / "predictions.json").read_text())
    assert preds["n_ok"] == metrics["n_cases"] and preds["n_failed"] == 0
    src = make_source("xray", str(tmp_path / "data" / "xray_demo"))
    refs = {r.name: r for r in src.cases()}
    for case in preds["cases"]:
        img = nib.load(case["output"])
        source_case = src.load(refs[case["case"]])
        assert img.shape == source_case.image.shape[1:]
        np.testing.assert_allclose(img.affine, source_case.affine, atol=1e-5)
