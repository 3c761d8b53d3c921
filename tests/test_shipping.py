"""The exported artifact: TorchScript/ONNX parity, integrity, MONAI bundle, model card, the
Hydra-free batch command (both backends, shards, bad cases), DICOM SEG output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, run_medseg
from medseg.errors import ArtifactError
from medseg.export.artifact import load_artifact


@pytest.fixture(scope="module")
def artifact(run_dir) -> Path:
    return run_dir / "export" / "artifact"


def test_export_writes_every_format_with_parity(run_dir, artifact):
    summary = json.loads((run_dir / "export" / "summary.json").read_text())
    for backend in ("torch", "onnxruntime"):
        p = summary["parity"][backend]
        assert p["parity_case"] == "real preprocessed case"
        assert p["label_agreement"] >= 0.9999 and p["max_abs_logit_diff"] <= 1e-3, (backend, p)
    meta = json.loads((artifact / "metadata.json").read_text())
    for f in ("model.ts", "model.onnx", "MODEL_CARD.md", "medseg_bundle/configs/metadata.json",
              "medseg_bundle/configs/inference.json", "medseg_bundle/models/model.ts", "medseg_bundle/docs/README.md"):
        assert len(meta["files"][f]) == 64, f
    import onnx

    model = onnx.load(str(artifact / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims][2:] == ["dim0", "dim1", "dim2"]  # dynamic spatial axes
    assert not {n.op_type for n in model.graph.node} & {"PRelu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh"}


def test_model_card(artifact):
    card = (artifact / "MODEL_CARD.md").read_text()
    for part in ("## Intended use", "## Input specification", "FLAIR, T1w, t1gd, T2w", "[4.0, 4.0, 4.0] mm",
                 "## Training data", "fingerprint sha256", "## Metrics", "Dice mean [95% CI]", "## Limitations",
                 "Not a medical device", "ReLU only"):
        assert part in card, part


def test_tampered_artifact_is_refused(artifact, tmp_path):
    for victim in ("model.onnx", "medseg_bundle/configs/inference.json", "model.ts"):
        copy = tmp_path / victim.replace("/", "_")
        shutil.copytree(artifact, copy)
        data = bytearray((copy / victim).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / victim).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match="sha256 differs"):
            load_artifact(copy, load_module=False)
    proc = subprocess.run([sys.executable, "-m", "medseg.inference.cli", str(copy), str(tmp_path), str(tmp_path / "o")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "sha256 differs" in proc.stderr and "Traceback" not in proc.stderr


def test_monai_bundle_loads_with_monai_tools(artifact):
    bundle = pytest.importorskip("monai.bundle")
    net, meta, extra = bundle.load("medseg_bundle", bundle_dir=str(artifact), load_ts_module=True,
                                   source="monaihosting", progress=False)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    art = load_artifact(artifact)
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        ref = art.module(x)
        assert torch.allclose(net(x), ref, atol=1e-5)
    parser = bundle.ConfigParser()
    parser.read_config(str(artifact / "medseg_bundle" / "configs" / "inference.json"))
    parser.read_meta(str(artifact / "medseg_bundle" / "configs" / "metadata.json"))
    rebuilt = parser.get_parsed_content("network_def")
    rebuilt.load_state_dict(torch.load(artifact / "medseg_bundle" / "models" / "model.pt", weights_only=True))
    with torch.inference_mode():
        assert torch.allclose(rebuilt.eval()(x), ref, atol=1e-5)
    acts = {type(m).__name__ for m in rebuilt.modules() if "activation" in type(m).__module__}
    assert acts == {"ReLU"}, acts
    bundle.verify_net_in_out(net_id="network_def", meta_file=str(artifact / "medseg_bundle/configs/metadata.json"),
                             config_file=str(artifact / "medseg_bundle/configs/inference.json"), device="cpu")


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('monai', 'hydra', 'omegaconf'):
            raise ImportError(f'{name} is blocked: the runtime must not need it')
        return None
sys.meta_path.insert(0, _Block())
"""


def _batch(args: list[str], tmp_path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``medseg-predict`` in a subprocess (working folder ``cwd``) where importing MONAI, Hydra or
    OmegaConf fails."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-m", "medseg.inference.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)


def test_batch_command_without_monai_or_hydra_both_backends(artifact, tiny_dataset, tmp_path):
    inputs = tiny_dataset / "imagesTs"
    labels = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        proc = _batch([str(artifact), str(inputs), str(out), "--backend", backend, "--threads", "2"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "predictions.json").read_text())
        assert summary["n_ok"] == 2 and summary["backend"] == backend
        assert all(c["peak_rss_mb"] > 0 and c["seconds"] > 0 for c in summary["cases"])
        for src in inputs.glob("*.nii.gz"):
            pred, img = nib.load(out / src.name), nib.load(src)
            assert pred.shape == img.shape[:3]
            np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
            labels.setdefault(src.name, []).append(np.asarray(pred.dataobj))
    for name, (a, b) in labels.items():
        assert (a == b).mean() >= 0.9999, name
    proc = _batch([str(artifact), str(inputs), str(tmp_path / "torch")], tmp_path)  # a rerun resumes
    assert proc.returncode == 0 and "2 skipped" in proc.stdout


def test_batch_shards_split_the_cases_and_a_bad_case_is_isolated(artifact, tiny_dataset, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(tiny_dataset / "imagesTs", inputs)
    shutil.copy(tiny_dataset / "imagesTr" / "BRATS_001.nii.gz", inputs)
    (inputs / "BRATS_000_broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    seen = []
    codes = []
    out = tmp_path / "out"  # one folder for both workers, as a Slurm array or an indexed job shares one
    for i in range(2):
        proc = _batch([str(artifact), str(inputs), str(out), "--shard", f"{i}/2"], tmp_path)
        codes.append(proc.returncode)
        summary = json.loads((out / f"predictions.shard-{i}-of-2.json").read_text())
        assert summary["shard"] == f"{i}/2"
        seen += [c["case"] for c in summary["cases"]]
        if any(c["status"] == "failed" for c in summary["cases"]):
            assert proc.returncode == 2 and "BRATS_000_broken" in proc.stderr and "Traceback" not in proc.stderr
        else:
            assert f"summary in {out / f'predictions.shard-{i}-of-2.json'}" in proc.stdout
    assert sorted(seen) == sorted(p.name[:-7] for p in inputs.glob("*.nii.gz")) and len(seen) == len(set(seen))
    assert sorted(codes) == [0, 2]
    assert not (out / "predictions.json").exists()  # no shard's summary stands for the whole batch
    assert {p.name[:-7] for p in out.glob("*.nii.gz")} == set(seen) - {"BRATS_000_broken"}
    proc = _batch([str(artifact), str(inputs), str(tmp_path / "x"), "--shard", "2/2"], tmp_path)
    assert proc.returncode == 2 and "0 <= i < n" in proc.stderr


def test_dicom_input_writes_dicom_seg_referencing_the_series(artifact, tmp_path):
    hd = pytest.importorskip("highdicom")
    import pydicom

    from medseg.data.synthetic import SynthConfig
    from medseg.data.synthetic_formats import write_dicom_dataset

    data = write_dicom_dataset(tmp_path / "dicom", SynthConfig(n=1, n_test=0, spacing=4.0, seed=5,
                                                               tumour_free_fraction=0.0))
    proc = run_medseg(["predict", "data=dicom", f"data.root={data}", "predict.source=data", "predict.dicom_seg=true",
                       f"paths.artifact={artifact}", f"paths.input={data}", "hydra.run.dir=pred"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    case = summary["cases"][0]
    seg = hd.seg.segread(case["dicom_seg"])
    label = np.asarray(nib.load(case["output"]).dataobj)
    assert label.any(), "the tiny model found nothing; the SEG check would be vacuous"
    from medseg.data.io.dicom import series_geometry
    from medseg.data.sources import make_source

    ref = next(iter(make_source("dicom", str(data), channels=["FLAIR", "T1w", "t1gd", "T2w"],
                                series_patterns={"FLAIR": "flair", "T1w": "t1(?!.*(gd|gad))", "t1gd": "t1.*gd",
                                                 "T2w": "t2(?!.*flair)"}).cases()))
    slices, _, _, _ = series_geometry(ref.series[0], 2**31)
    first = pydicom.dcmread(slices[0].path, stop_before_pixels=True)
    refs = seg.ReferencedSeriesSequence[0]
    assert refs.SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    uids = [pydicom.dcmread(s.path, stop_before_pixels=True).SOPInstanceUID for s in slices]
    for number, code in ((1, 1), (3, 3)):
        if not (label == code).any():
            continue
        volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number],
                                                   combine_segments=False)[..., 0]
        expected = np.stack([(label[:, :, k] == code).T for k in range(len(slices))])
        assert np.array_equal(volume.astype(bool), expected), number
    # the Hydra-free batch command reads the same studies (layout told from the files: no NIfTI,
    # DICOM under the folder), identifies the same series and writes the same labels and SEG
    proc = _batch([str(artifact), str(data / "dicom"), str(tmp_path / "batch")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch = json.loads((tmp_path / "batch" / "predictions.json").read_text())
    assert batch["layout"] == "dicom" and [c["case"] for c in batch["cases"]] == [case["case"]]
    assert batch["cases"][0]["contrasts"] == case["contrasts"]
    assert np.array_equal(np.asarray(nib.load(batch["cases"][0]["output"]).dataobj), label)
    assert np.allclose(nib.load(batch["cases"][0]["output"]).affine, nib.load(case["output"]).affine)
    assert hd.seg.segread(batch["cases"][0]["dicom_seg"]).ReferencedSeriesSequence[0].SeriesInstanceUID \
        == first.SeriesInstanceUID
    # the same studies as bare data sets (no preamble, no file meta; IM0000 ...: no suffix), as some
    # older exports write them: found, read and referenced by the SEG the same way
    for f in (data / "dicom").rglob("IM*"):
        ds = pydicom.dcmread(f)
        ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
        ds.save_as(f, enforce_file_format=False, implicit_vr=True, little_endian=True)
    proc = _batch([str(artifact), str(data / "dicom"), str(tmp_path / "bare")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bare = json.loads((tmp_path / "bare" / "predictions.json").read_text())["cases"][0]
    assert np.array_equal(np.asarray(nib.load(bare["output"]).dataobj), label)
    assert hd.seg.segread(bare["dicom_seg"]).ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images here")
    proc = _batch([str(artifact), str(empty), str(tmp_path / "none")], tmp_path)
    assert proc.returncode == 2 and "no DICOM files" in proc.stderr and "Traceback" not in proc.stderr


def test_medseg_predict_takes_series_hints_and_a_mapping_for_dicom(artifact, tiny_dataset, tmp_path):
    from medseg.data.synthetic import SynthConfig
    from medseg.data.synthetic_formats import write_dicom_dataset

    studies = write_dicom_dataset(tmp_path / "dicom", SynthConfig(n=1, n_test=0, spacing=4.0, seed=5,
                                                                  tumour_free_fraction=0.0)) / "dicom"
    proc = _batch([str(artifact), str(studies), str(tmp_path / "plain")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads((tmp_path / "plain" / "predictions.json").read_text())["cases"][0]
    assert plain["contrasts"]["FLAIR"]["reasons"][-1].endswith("agrees")
    # a hint replaces the default of its channel only; the attributes still decide
    proc = _batch([str(artifact), str(studies), str(tmp_path / "hinted"), "--series-pattern", "FLAIR=no such words"],
                  tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hinted = json.loads((tmp_path / "hinted" / "predictions.json").read_text())["cases"][0]
    assert hinted["contrasts"]["FLAIR"]["reasons"][-1].endswith("matches no channel pattern")
    assert hinted["contrasts"]["T2w"]["reasons"][-1].endswith("agrees")
    assert {c: v["series_uid"] for c, v in hinted["contrasts"].items()} \
        == {c: v["series_uid"] for c, v in plain["contrasts"].items()}
    # a mapping (relative to the working folder) names the series, over the identification
    uids = {c: v["series_uid"] for c, v in plain["contrasts"].items()}
    (tmp_path / "map.json").write_text(json.dumps({plain["case"]: {**uids, "T2w": uids["FLAIR"], "FLAIR": uids["T2w"]}}))
    proc = _batch([str(artifact), str(studies), str(tmp_path / "mapped"), "--series-map", "map.json"], tmp_path,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mapped = json.loads((tmp_path / "mapped" / "predictions.json").read_text())["cases"][0]
    assert mapped["contrasts"]["T2w"]["series_uid"] == uids["FLAIR"]
    assert mapped["contrasts"]["FLAIR"]["series_uid"] == uids["T2w"]
    # a mapping that names one channel: the others are identified as without it
    (tmp_path / "one.json").write_text(json.dumps({plain["case"]: {"T1w": plain["contrasts"]["T1w"]["series_uid"]}}))
    proc = _batch([str(artifact), str(studies), str(tmp_path / "one"), "--series-map", "one.json"], tmp_path,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "predictions.json").read_text())["cases"][0]
    assert {c: v["series_uid"] for c, v in one["contrasts"].items()} == uids
    assert [c for c, v in one["contrasts"].items() if v["reasons"][0].startswith("data.series_mapping")] == ["T1w"]
    # the Hydra predict stage takes the same two settings (predict.series_patterns/series_mapping)
    from medseg.config import MedsegConfig
    from medseg.errors import ConfigError
    from medseg.stages.predict import predict

    cfg = MedsegConfig()
    cfg.predict.inference.threads = 1
    cfg.predict.series_patterns, cfg.predict.series_mapping = {"FLAIR": "no such words"}, str(tmp_path / "map.json")
    summary = predict(cfg, artifact, studies, tmp_path / "stage")
    assert summary["layout"] == "dicom" and summary["n_ok"] == 1
    staged = json.loads((tmp_path / "stage" / "predictions.json").read_text())["cases"][0]["contrasts"]
    assert {c: v["series_uid"] for c, v in staged.items()} == {c: v["series_uid"] for c, v in mapped["contrasts"].items()}
    cfg.predict.series_mapping = None
    summary = predict(cfg, artifact, studies, tmp_path / "stage_hinted")
    hinted_stage = json.loads((tmp_path / "stage_hinted" / "predictions.json").read_text())["cases"][0]["contrasts"]
    assert hinted_stage["FLAIR"]["reasons"] == hinted["contrasts"]["FLAIR"]["reasons"]
    with pytest.raises(ConfigError, match="series patterns and mappings choose DICOM series"):
        predict(cfg, artifact, tiny_dataset / "imagesTs", tmp_path / "stage_nifti")
    with pytest.raises(ConfigError, match="with predict.source=data set data.series_patterns/data.series_mapping"):
        predict(cfg, artifact, studies, tmp_path / "stage_data", source="data")
    # mistakes are one line, exit 2, nothing written
    (tmp_path / "lower.json").write_text(json.dumps({plain["case"]: {"flair": uids["FLAIR"]}}))
    for args, message in (
            (["--series-pattern", "FLAIR=(unclosed"], "series pattern of channel 'FLAIR' is not a regular expression"),
            (["--series-pattern", "ADC=adc"], "series patterns for ['ADC'], which are not channels of the model"),
            (["--series-pattern", "flair"], "expected CHANNEL=REGEX"),
            (["--series-pattern", "FLAIR="], "expected CHANNEL=REGEX"),
            (["--series-map", "absent.json"], "absent.json: file not found"),
            (["--series-map", "lower.json"], "lower.json: series mapping names ['flair'], which are not among the channels"),
    ):
        proc = _batch([str(artifact), str(studies), str(tmp_path / "bad"), *args], tmp_path, cwd=tmp_path)
        errors = [x for x in proc.stderr.splitlines() if not x.startswith("[")]  # the log lines aside
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], (args, proc.stderr)
        assert errors[0].startswith("medseg-predict: error: ")
        assert not (tmp_path / "bad" / "predictions.json").exists()
    proc = _batch([str(artifact), str(tiny_dataset / "imagesTs"), str(tmp_path / "nifti"), "--series-map", "map.json"],
                  tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and "series patterns and mappings choose DICOM series" in proc.stderr


def test_memory_cap_refuses_a_case_clearly_and_bf16_agrees(artifact, tiny_dataset, tmp_path):
    inputs = tiny_dataset / "imagesTs"
    proc = _batch([str(artifact), str(inputs), str(tmp_path / "capped"), "--max-memory-gb", "0.05"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "memory cap" in proc.stderr and "max_memory_gb=0.05" in proc.stderr
    assert not list((tmp_path / "capped").glob("*.nii.gz"))
    labels = []
    for precision in ("fp32", "bf16"):
        proc = _batch([str(artifact), str(inputs), str(tmp_path / precision), "--precision", precision], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        labels.append([np.asarray(nib.load(p).dataobj) for p in sorted((tmp_path / precision).glob("*.nii.gz"))])
    for a, b in zip(*labels):
        assert (a == b).mean() >= 0.99


def test_int8_onnx_model_runs(artifact, tiny_dataset, tmp_path):
    from medseg.export.onnx import quantize_int8

    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    quantize_int8(copy / "model.onnx", copy / "model.int8.onnx")
    art = load_artifact(copy, load_module=False)  # an added file does not break the hashes of the others
    net = art.network("onnxruntime-int8")
    full = art.network("onnxruntime")
    x = torch.randn(1, 4, 32, 32, 32)
    out, ref = net(x), full(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.5


def test_a_case_that_raises_anything_fails_alone(artifact, tiny_dataset, tmp_path):
    """An error nobody foresaw (here a ValueError from a loader) is that case's one-line failure;
    the batch finishes the other cases and writes its summary."""
    from medseg.config import Device, InferenceConfig
    from medseg.errors import PartialFailure
    from medseg.inference.build import build_predictor
    from medseg.inference.layouts import discover_inputs
    from medseg.inference.runtime import InputCase, run_batch

    art = load_artifact(artifact)
    items, _ = discover_inputs(tiny_dataset / "imagesTs", "auto", art.spec.channels)

    def boom():
        raise ValueError("an unforeseen library error")

    items.insert(0, InputCase("odd", tiny_dataset / "imagesTs", boom))
    predictor = build_predictor(InferenceConfig(device=Device.cpu), artifact=art)
    with pytest.raises(PartialFailure, match="odd|imagesTs"):
        run_batch(items, predictor, art, tmp_path, dicom_seg=False)
    summary = json.loads((tmp_path / "predictions.json").read_text())
    status = {c["case"]: c["status"] for c in summary["cases"]}
    assert status.pop("odd") == "failed" and set(status.values()) == {"ok"} and len(status) == len(items) - 1
    error = next(c["error"] for c in summary["cases"] if c["case"] == "odd")
    assert "ValueError: an unforeseen library error" in error and "\n" not in error
