"""End to end: `medseg run` in a subprocess on a tiny built-in dataset, then every artifact."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import TINY, run_medseg


def test_run_writes_every_stage(run_dir):
    for stage in ("prepare", "train", "evaluate", "export", "predict"):
        assert (run_dir / stage / "summary.json").is_file(), stage
        assert (run_dir / stage / "config.yaml").is_file(), stage
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["test_dice"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}


def test_prepare_outputs(run_dir):
    datalist = json.loads((run_dir / "prepare" / "datalist.json").read_text())
    assert len(datalist["test"]) == 2 and datalist["train"] and datalist["validation"]
    names = [e["name"] for split in ("train", "validation", "test") for e in datalist[split]]
    assert len(names) == len(set(names)) == 6
    image = np.load(datalist["train"][0]["image"], mmap_mode="r")
    assert image.ndim == 4 and image.shape[0] == 4 and image.dtype == np.float32
    fp = json.loads((run_dir / "prepare" / "fingerprint.json").read_text())
    assert fp["n_cases"] == 6 and set(fp["intensity"]) == {"FLAIR", "T1w", "t1gd", "T2w"}
    assert fp["n_tumour_free"] >= 1
    plan = json.loads((run_dir / "prepare" / "plan.json").read_text())
    assert plan["preprocessing"]["target_spacing"] == [4.0, 4.0, 4.0]


def test_train_outputs(run_dir):
    train = run_dir / "train"
    lines = [json.loads(x) for x in (train / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert "val_dice" in lines[-1]
    assert list((train / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = torch.load(train / "best.pt", map_location="cpu", weights_only=True)
    assert "model" in ckpt and ckpt["meta"]["patch_size"] == [32, 32, 32]


def test_evaluate_outputs(run_dir, tiny_dataset):
    ev = run_dir / "evaluate"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n_cases"] == 2
    assert "both masks empty -> Dice 1" in metrics["convention"]["empty"]
    for region in ("whole_tumour", "tumour_core", "enhancing_tumour"):
        d = metrics["summary"][region]["dice"]["mean"]
        assert 0.0 <= d <= 1.0
    csv = (ev / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("case,status,structure,dice,iou,hd95,msd,nsd,sensitivity,specificity,precision,volume_pred_ml")
    for region in ("whole_tumour", "tumour_core", "enhancing_tumour"):
        assert 0.0 <= metrics["summary"][region]["lesion_dice"]["mean"] <= 1.0
        ci = metrics["summary"][region]["dice"]["ci95"]
        assert ci[0] <= metrics["summary"][region]["dice"]["mean"] <= ci[1]
    assert len(csv) == 1 + 2 * 6  # 2 cases x (3 regions + 3 labels)
    det = json.loads((ev / "detections.json").read_text())
    assert len(det["cases"]) == 2 and set(det["case_level"]) >= {"sensitivity", "specificity", "roc_auc_volume"}
    assert any(not c["reference_tumour_present"] for c in det["cases"])  # the tumour-free test case
    for c in det["cases"]:
        assert c["n_lesions"] == len(c["lesions"])
    html = (ev / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "whole_tumour" in html
    assert "![" in (ev / "report.md").read_text()
    for pred in (ev / "predictions").glob("*.nii.gz"):
        src = nib.load(tiny_dataset / "imagesTs" / pred.name)
        out = nib.load(pred)
        assert out.shape == src.shape[:3]
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)


def test_export_outputs(run_dir):
    summary = json.loads((run_dir / "export" / "summary.json").read_text())
    assert summary["label_agreement"] >= 0.9999 and summary["max_abs_logit_diff"] <= 1e-3
    meta = json.loads((run_dir / "export" / "artifact" / "metadata.json").read_text())
    assert meta["input"]["channels"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert meta["output"]["regions"]["tumour_core"] == [2, 3]
    assert meta["network"]["activation"] == "ReLU"
    assert meta["metrics"]["whole_tumour"]["dice"]["mean"] >= 0
    assert len(meta["files"]["model.ts"]) == 64 and len(meta["weights_sha256"]) == 64


def test_predict_outputs_on_native_grid(run_dir, tiny_dataset):
    for src_path in (tiny_dataset / "imagesTs").glob("*.nii.gz"):
        out = nib.load(run_dir / "predict" / src_path.name)
        src = nib.load(src_path)
        assert out.shape == src.shape[:3]
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 3}
    summary = json.loads((run_dir / "predict" / "predictions.json").read_text())
    assert summary["n_ok"] == 2 and all(c["seconds"] > 0 for c in summary["cases"])


def test_predict_isolates_a_bad_case_and_fails_at_the_end(run_dir, tiny_dataset, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(tiny_dataset / "imagesTs", inputs)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti")
    proc = run_medseg(["predict", f"paths.artifact={run_dir / 'export' / 'artifact'}", f"paths.input={inputs}",
                       "hydra.run.dir=pred"], tmp_path)
    assert proc.returncode == 2
    assert "broken.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    ok = sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz"))
    assert ok == sorted(p.name for p in (tiny_dataset / "imagesTs").glob("*.nii.gz"))
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert summary["n_failed"] == 1 and summary["n_ok"] == 2


def test_ensemble_of_identical_models_gives_the_single_model_result(run_dir, tiny_dataset, tmp_path):
    art = run_dir / "export" / "artifact"
    copy = tmp_path / "fold1"
    shutil.copytree(art, copy)
    proc = run_medseg(["predict", f"paths.artifact={art}", f"paths.input={tiny_dataset / 'imagesTs'}",
                       f"predict.ensemble=[{copy}]", "hydra.run.dir=ens"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ens" / "predictions.json").read_text())
    assert summary["ensemble"] == [str(copy)] and summary["n_ok"] == 2
    post = json.loads((art / "metadata.json").read_text())["postprocessing"]
    assert summary["postprocessing"]["min_enhancing_ml"] == post["min_enhancing_ml"]  # the same evidence twice
    assert summary["postprocessing"]["min_enhancing_source"] == (
        f"refitted on the pooled validation cases of the 2 ensemble members ({2 * post['enhancing_fit']['n_cases']} cases)")
    for out in (tmp_path / "ens").glob("*.nii.gz"):
        single = np.asarray(nib.load(run_dir / "predict" / out.name).dataobj)
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), single)


def test_ensemble_refuses_models_with_other_outputs(run_dir):
    import copy

    from medseg.errors import ArtifactError
    from medseg.export.artifact import load_artifact
    from medseg.config import Device, InferenceConfig
    from medseg.inference.build import build_predictor

    art = load_artifact(run_dir / "export" / "artifact")
    other = copy.copy(art)
    other.metadata = {**art.metadata, "output": {**art.metadata["output"], "mode": "regions"}}
    inference = InferenceConfig(min_component_ml=0.0, device=Device.cpu)
    with pytest.raises(ArtifactError, match="its output differs"):
        build_predictor(inference, artifact=art, ensemble=[other])


def test_tampered_artifact_is_refused(run_dir, tiny_dataset, tmp_path):
    art = tmp_path / "artifact"
    shutil.copytree(run_dir / "export" / "artifact", art)
    raw = bytearray((art / "model.ts").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (art / "model.ts").write_bytes(bytes(raw))
    proc = run_medseg(["predict", f"paths.artifact={art}", f"paths.input={tiny_dataset / 'imagesTs'}",
                       "hydra.run.dir=pred"], tmp_path)
    assert proc.returncode == 2
    assert "sha256 differs" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "pred").glob("*.nii.gz"))


def test_2d_model_runs_slicewise_end_to_end(tiny_dataset, tmp_path):
    """model.spatial_dims=2 trains a 2D U-Net on axial slices; the artifact still predicts volumes."""
    tiny_2d = [o for o in TINY if not o.startswith("train.patch_size")]
    proc = run_medseg(["run", f"data.root={tiny_dataset}", "hydra.run.dir=out", *tiny_2d,
                       "model.spatial_dims=2", "train.patch_size=[32,32]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "out" / "export" / "artifact" / "metadata.json").read_text())
    assert meta["input"]["patch_size"] == [32, 32, 1] and meta["network"]["spatial_dims"] == 2
    for src_path in (tiny_dataset / "imagesTs").glob("*.nii.gz"):
        assert nib.load(tmp_path / "out" / "predict" / src_path.name).shape == nib.load(src_path).shape[:3]


def test_run_learns_the_tumour(tiny_dataset, tmp_path):
    """Not just a number in [0, 1]: a few hundred iterations on the tiny set must find the tumour.

    The floor is set well under what this run reaches (whole-tumour Dice 0.6-0.76 on the
    tumour-bearing test case over seeds 0 and 1) and far above what a network that learned
    nothing scores (0: it predicts background everywhere)."""
    learn = [o for o in TINY if not o.startswith(("model.channels", "train.max_epochs", "train.iters_per_epoch",
                                                  "train.warmup_iters"))]
    proc = run_medseg(["run", f"data.root={tiny_dataset}", "hydra.run.dir=out", *learn, "model.channels=[16,32,64]",
                       "train.max_epochs=8", "train.iters_per_epoch=40", "train.warmup_iters=10", "train.lr=0.01"],
                      tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())
    tumour = [c for c in metrics["cases"] if c["whole_tumour"]["volume_ref_ml"] > 0]
    assert tumour, "the tiny test split has a tumour-bearing case"
    assert np.mean([c["whole_tumour"]["dice"] for c in tumour]) >= 0.35
