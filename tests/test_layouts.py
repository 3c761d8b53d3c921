"""Input layouts of ``medseg-predict`` / ``medseg predict`` (:mod:`medseg.inference.layouts`): BraTS
2023 flat folders, BraTS 2021 case folders and nnU-Net files, told apart automatically, channels
matched by name, outputs in the label coding asked for, incomplete cases reported alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from conftest import run_medseg
from medseg.config import InputLayout, MedsegConfig, OutputCoding
from medseg.data.labels import LESION_LABELS, LESION_REGIONS, LabelSpec, encode_labels, remap_labels
from medseg.data.preprocess import PreprocessSpec
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_brats_dataset
from medseg.errors import ConfigError, DataError
from medseg.export.artifact import script_model, write_artifact
from medseg.export.metadata import artifact_metadata
from medseg.inference.cli import main
from medseg.inference.layouts import detect_layout, discover_inputs, output_coding
from medseg.inference.targets import Target
from medseg.models.checkpoint import CheckpointMeta, save_checkpoint
from medseg.models.unet import build_model
from medseg.stages.predict import predict

CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")
MODEL = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "instance",
         "dropout": 0.0, "deep_supervision": False, "deep_supr_num": 1}
#: the file of each model channel, per BraTS release
BRATS_FILES = {"brats2023": dict(zip(CHANNELS, ("-t2f", "-t1n", "-t1c", "-t2w"))),
               "brats2021": dict(zip(CHANNELS, ("_flair", "_t1", "_t1ce", "_t2")))}
#: nnU-Net channel numbering deliberately unlike the model's order
NNUNET_NAMES = {"0": "T2w", "1": "FLAIR", "2": "T1w", "3": "t1gd"}


def _artifact(root: Path, accepted_subsets: list[list[str]] | None = None) -> Path:
    """A tiny untrained artifact (its labels vary over the phantom: every class appears)."""
    torch.manual_seed(0)
    model = build_model(MODEL, len(CHANNELS), 4, inference=True).eval()
    plan = {"preprocessing": PreprocessSpec(channels=CHANNELS, target_spacing=(4.0, 4.0, 4.0)).to_json(),
            "labels": LabelSpec().to_json()}
    meta = CheckpointMeta(plan=plan, model=MODEL, patch_size=[16, 16, 16],
                          target=Target("labels", LabelSpec()).to_json(), in_channels=len(CHANNELS), num_classes=4)
    save_checkpoint(root / "best.pt", model, meta)
    metadata = artifact_metadata("tiny", meta, model, root / "best.pt", None, min_component_ml=0.0)
    if accepted_subsets:
        metadata["input"]["accepted_subsets"] = accepted_subsets
    return write_artifact(root / "artifact", script_model(model, torch.zeros(1, 4, 16, 16, 16)), metadata)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return _artifact(tmp_path_factory.mktemp("layout_art"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Read-only input folders of the same three phantom cases (varied grids) in every layout."""
    root = tmp_path_factory.mktemp("layouts")
    cfg = SynthConfig(n=3, n_test=0, spacing=4.0, seed=5, tumour_free_fraction=0.0)
    out = {"brats2023_folders": write_brats_dataset(root / "b23", cfg, "brats2023", workers=1),
           "brats2021": write_brats_dataset(root / "b21", cfg, "brats2021", workers=1)}
    flat, nnunet, nifti4d = root / "flat", root / "nnunet" / "imagesTs", root / "nifti4d"
    for folder in (flat, nnunet, nifti4d):
        folder.mkdir(parents=True)
    (nnunet.parent / "dataset.json").write_text(json.dumps({"channel_names": NNUNET_NAMES}))
    for case in sorted(out["brats2023_folders"].iterdir()):
        for f in case.glob("*.nii.gz"):
            if not f.name.endswith("-seg.nii.gz"):
                shutil.copy(f, flat)
        ref = nib.load(case / f"{case.name}-t1n.nii.gz")
        for index, name in NNUNET_NAMES.items():
            shutil.copy(case / f"{case.name}{BRATS_FILES['brats2023'][name]}.nii.gz",
                        nnunet / f"{case.name}_{int(index):04d}.nii.gz")
        nib.save(nib.Nifti1Image(_reference(flat, case.name, "brats2023", CHANNELS), ref.affine),
                 nifti4d / f"{case.name}.nii.gz")
    return {**out, "brats2023": flat, "nnunet": nnunet, "nifti4d": nifti4d}


def _reference(folder: Path, case: str, release: str, channels: tuple[str, ...]) -> np.ndarray:
    """The case's files stacked channel-last in ``channels`` order, read with nibabel alone."""
    files = [folder / f"{case}{BRATS_FILES[release][c]}.nii.gz" for c in channels]
    return np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in files], axis=-1)


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.mark.parametrize("coding", ["msd", "brats2021", "brats2023"])
def test_encode_labels_inverts_remap_labels(coding):
    internal = np.random.default_rng(0).integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    coded = encode_labels(internal, coding)
    np.testing.assert_array_equal(remap_labels(coded, coding), internal)
    # internal (MSD) 1 edema, 2 non-enhancing, 3 enhancing
    expected = {"msd": [0, 1, 2, 3], "brats2021": [0, 2, 1, 4], "brats2023": [0, 2, 1, 3]}[coding]
    assert encode_labels(np.arange(4), coding).tolist() == expected


def test_encode_labels_refuses_codes_the_convention_lacks():
    with pytest.raises(DataError, match="internal labels \\[5\\]"):
        encode_labels(np.array([0, 5]), "brats2023")


def test_layouts_are_told_apart_by_the_file_names(data):
    assert {k: detect_layout(v) for k, v in data.items()} == {
        "brats2023_folders": "brats2023", "brats2021": "brats2021", "brats2023": "brats2023",
        "nnunet": "nnunet", "nifti4d": "nifti4d"}
    assert detect_layout(next(data["nifti4d"].iterdir())) == "nifti4d"


def test_a_folder_of_dicom_files_is_the_dicom_layout(tmp_path):
    from pydicom.data import get_testdata_file

    scanner = tmp_path / "export" / "DICOM" / "0001"  # no .dcm suffix, as scanners write them
    scanner.mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), scanner / "IM0001")
    (tmp_path / "export" / "README.TXT").write_text("exported by the scanner")
    assert detect_layout(tmp_path / "export") == "dicom"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match="no NIfTI files .* and no DICOM files"):
        detect_layout(tmp_path / "plain")
    with pytest.raises(DataError, match="reads a folder of DICOM studies"):
        discover_inputs(scanner / "IM0001", InputLayout.dicom.value, CHANNELS)
    # a mask saved as NIfTI beside the study, not named -seg: neither layout is guessed
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "export" / "mask.nii.gz")
    with pytest.raises(DataError, match=r"mixes input layouts \(1 nifti4d file\(s\) such as mask.nii.gz; "
                                        r"DICOM images such as DICOM/0001/IM0001\)"):
        detect_layout(tmp_path / "export")


def _write_seg(path: Path) -> bool:
    """A DICOM SEG of pydicom's MR_small written by highdicom (``False`` when it is not installed)."""
    try:
        import highdicom as hd
    except ImportError:
        return False
    from pydicom.data import get_testdata_file

    image = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    hd.seg.Segmentation(
        source_images=[image], pixel_array=(image.pixel_array > image.pixel_array.mean()).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="tumour", segmented_property_category=hd.sr.CodedConcept(
                "49755003", "SCT", "Morphologically Altered Structure"),
            segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medseg tests", manufacturer_model_name="none", software_versions="0",
        device_serial_number="0").save_as(path)
    return True


def test_dicom_objects_without_an_image_beside_nifti_are_not_a_second_layout(data, tmp_path):
    """A DICOMDIR index, an RT structure set, a structured report or a corrupt file named .dcm in a
    NIfTI folder (a delivery's extras) leave the layout alone; one DICOM image at any depth does not."""
    from pydicom.data import get_testdata_file

    folder = shutil.copytree(data["brats2023_folders"], tmp_path / "brats")
    case = next(p for p in folder.iterdir() if p.is_dir())
    (case / "extras" / "deep").mkdir(parents=True)
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    shutil.copy(get_testdata_file("rtstruct.dcm"), case / "extras" / "structures.dcm")
    shutil.copy(get_testdata_file("test-SR.dcm"), case / "extras" / "deep" / "report")
    (case / "extras" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk")
    mr = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (case / "extras" / "truncated.dcm").write_bytes(mr[:153])  # pydicom raises struct.error on it
    if _write_seg(case / "extras" / "tumour.seg.dcm"):  # has Rows: only its Modality tells it apart
        assert "Rows" in pydicom.dcmread(case / "extras" / "tumour.seg.dcm", stop_before_pixels=True)
    assert detect_layout(folder) == "brats2023"
    shutil.copy(get_testdata_file("MR_small.dcm"), case / "extras" / "deep" / "IM0001")
    with pytest.raises(DataError, match=r"brats2023 file\(s\) such as .*; DICOM images such as "
                                        rf"{case.name}/extras/deep/IM0001\)"):
        detect_layout(folder)


def test_a_folder_mixing_layouts_is_refused_in_one_line(data, artifact, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(data["brats2023"], mixed)
    shutil.copy(next(data["nifti4d"].iterdir()), mixed)
    with pytest.raises(DataError, match="mixes input layouts .*brats2023 file.*nifti4d file"):
        detect_layout(mixed)
    assert main([str(artifact), str(mixed), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mixes input layouts" in err and "--layout" in err
    assert not (tmp_path / "out" / "predictions.json").exists()


@pytest.mark.parametrize("layout", ["brats2023", "brats2023_folders", "brats2021", "nnunet"])
@pytest.mark.parametrize("channels", [CHANNELS, ("T2w", "t1gd", "FLAIR", "T1w")])
def test_channels_are_matched_by_name_never_by_file_order(data, layout, channels):
    items, used = discover_inputs(data[layout], "auto", channels)
    assert used == layout.removesuffix("_folders")
    assert [i.name for i in items] == sorted(i.name for i in items) and len(items) == 3
    release = "brats2021" if layout == "brats2021" else "brats2023"
    for item in items:
        image, affine, like = item.load()
        files = next(data[layout if layout != "nnunet" else "brats2023"].rglob(f"{item.name}*.nii.gz"))
        ref = _reference(files.parent, item.name, release, channels)
        np.testing.assert_array_equal(np.moveaxis(image, 0, -1), ref)
        np.testing.assert_allclose(affine, like.affine, atol=1e-6)


def test_nnunet_without_dataset_json_takes_the_artifact_order(data, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(data["nnunet"], plain)  # the dataset.json is in the parent: not copied
    items, _ = discover_inputs(plain, InputLayout.nnunet.value, CHANNELS)
    image = items[0].load()[0]
    by_index = [np.asarray(nib.load(plain / f"{items[0].name}_{i:04d}.nii.gz").dataobj) for i in range(4)]
    for c in range(4):
        np.testing.assert_array_equal(image[c], by_index[c])


def test_a_channel_the_layout_cannot_give_is_a_config_error(data):
    with pytest.raises(ConfigError, match="model's channel 'CT' matches no brats2023 contrast"):
        discover_inputs(data["brats2023"], "auto", ("CT",))


def test_brats2023_folder_in_brats2023_codes_on_the_input_grids(data, artifact, tmp_path):
    """The container convention: ``<id>-t1n/...`` files in, ``<id>.nii.gz`` in BraTS 2023 codes out;
    read back with ``remap_labels(..., "brats2023")`` they equal the internal (MSD-coded) predictions
    of the same cases given as 4D NIfTI."""
    out23, out_msd = tmp_path / "b23", tmp_path / "msd"
    assert main([str(artifact), str(data["brats2023"]), str(out23), "--threads", "1"]) == 0
    assert main([str(artifact), str(data["nifti4d"]), str(out_msd), "--threads", "1", "--labels", "msd"]) == 0
    summary = json.loads((out23 / "predictions.json").read_text())
    assert summary["layout"] == "brats2023" and summary["labels"] == "brats2023" and summary["n_ok"] == 3
    assert summary["label_codes"] == {"0": "background", "1": "non-enhancing tumour", "2": "edema",
                                      "3": "enhancing tumour"}
    cases = sorted(p.name for p in data["brats2023_folders"].iterdir())
    assert sorted(p.name for p in out23.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        out, src = nib.load(out23 / f"{case}.nii.gz"), nib.load(data["brats2023"] / f"{case}-t1n.nii.gz")
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
        coded, internal = _labels(out23 / f"{case}.nii.gz"), _labels(out_msd / f"{case}.nii.gz")
        assert set(np.unique(coded).tolist()) == {0, 1, 2, 3}, "every class predicted: the check is not vacuous"
        np.testing.assert_array_equal(remap_labels(coded, "brats2023"), internal)
        assert (coded != internal).any()  # the codes really differ from the internal ones


def test_brats2021_folders_default_to_brats2021_codes_and_labels_flag_overrides(data, artifact, tmp_path):
    assert main([str(artifact), str(data["brats2021"]), str(tmp_path / "a"), "--threads", "1"]) == 0
    assert main([str(artifact), str(data["brats2021"]), str(tmp_path / "b"), "--threads", "1",
                 "--labels", "brats2023"]) == 0
    assert json.loads((tmp_path / "a" / "predictions.json").read_text())["labels"] == "brats2021"
    for f in sorted((tmp_path / "a").glob("*.nii.gz")):
        coded = _labels(f)
        assert set(np.unique(coded).tolist()) == {0, 1, 2, 4}
        np.testing.assert_array_equal(remap_labels(coded, "brats2021"),
                                      remap_labels(_labels(tmp_path / "b" / f.name), "brats2023"))


def test_nnunet_files_default_to_msd_codes(data, artifact, tmp_path):
    assert main([str(artifact), str(data["nnunet"]), str(tmp_path / "n"), "--threads", "1"]) == 0
    assert main([str(artifact), str(data["nifti4d"]), str(tmp_path / "m"), "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "n" / "predictions.json").read_text())
    assert summary["layout"] == "nnunet" and summary["labels"] == "msd"
    for f in sorted((tmp_path / "m").glob("*.nii.gz")):
        np.testing.assert_array_equal(_labels(tmp_path / "n" / f.name), _labels(f))


def test_a_missing_contrast_fails_that_case_alone_naming_it(data, artifact, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(data["brats2023"], inputs)
    lacking = sorted(inputs.glob("*-t1c.nii.gz"))[1]
    case = lacking.name.removesuffix("-t1c.nii.gz")
    lacking.unlink()
    assert main([str(artifact), str(inputs), str(tmp_path / "out"), "--threads", "1"]) == 2
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["n_ok"] == 2 and summary["n_failed"] == 1
    failed = next(c for c in summary["cases"] if c["status"] == "failed")
    assert failed["case"] == case and failed["missing_channels"] == ["t1gd"]
    assert f"{case}-t1c.nii.gz" in failed["error"] and "lacks the contrast t1gd" in failed["error"]
    assert "\n" not in failed["error"] and not (tmp_path / "out" / f"{case}.nii.gz").exists()
    assert "lacks the contrast t1gd" in capsys.readouterr().err


def test_a_missing_contrast_the_model_accepts_is_predicted_and_marked(data, tmp_path):
    art = _artifact(tmp_path, accepted_subsets=[list(CHANNELS), ["FLAIR", "T1w", "T2w"]])
    inputs = tmp_path / "in"
    shutil.copytree(data["brats2023"], inputs)
    for f in inputs.glob("*-t1c.nii.gz"):
        f.unlink()
    assert main([str(art), str(inputs), str(tmp_path / "out"), "--threads", "1"]) == 0
    cases = json.loads((tmp_path / "out" / "predictions.json").read_text())["cases"]
    assert all(c["status"] == "ok" and c["missing_channels"] == ["t1gd"] for c in cases)
    assert all(c["missing_files"] == [f"{c['case']}-t1c.nii.gz"] for c in cases)
    image = discover_inputs(inputs, "auto", CHANNELS)[0][0].load()[0]
    assert not image[2].any() and image[0].any()  # the missing channel is fed as zeros


def test_brats_codes_are_refused_for_a_model_without_the_brats_labels():
    lesion = LabelSpec(labels=dict(LESION_LABELS), regions=dict(LESION_REGIONS))
    assert output_coding(OutputCoding.auto.value, "brats2023", lesion) == "msd"
    assert output_coding(OutputCoding.auto.value, "brats2023", LabelSpec()) == "brats2023"
    assert output_coding(OutputCoding.auto.value, "nnunet", LabelSpec()) == "msd"
    with pytest.raises(ConfigError, match="brats2021 needs a model of the BraTS tumour labels"):
        output_coding("brats2021", "nifti4d", lesion)


def test_predict_stage_takes_the_layout_and_labels_keys(data, artifact, tmp_path):
    cfg = MedsegConfig()
    cfg.predict.layout, cfg.predict.labels = InputLayout.brats2021, OutputCoding.brats2023
    cfg.predict.inference.threads = 1
    summary = predict(cfg, artifact, data["brats2021"], tmp_path)
    assert summary["layout"] == "brats2021" and summary["labels"] == "brats2023" and summary["n_ok"] == 3
    cases = json.loads((tmp_path / "predictions.json").read_text())["cases"]
    assert set(np.unique(_labels(Path(cases[0]["output"]))).tolist()) == {0, 1, 2, 3}


@pytest.mark.slow
def test_medseg_predict_command_takes_the_keys_and_refuses_an_unknown_layout(data, artifact, tmp_path):
    proc = run_medseg(["predict", f"paths.artifact={artifact}", f"paths.input={data['brats2023']}",
                       "predict.labels=brats2021", "predict.inference.threads=1", "hydra.run.dir=pred"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert summary["layout"] == "brats2023" and summary["labels"] == "brats2021" and summary["n_ok"] == 3
    proc = run_medseg(["predict", f"paths.artifact={artifact}", f"paths.input={data['brats2021']}",
                       "predict.layout=brats2022", "hydra.run.dir=bad"], tmp_path)
    assert proc.returncode != 0 and "brats2021" in proc.stderr and "Traceback" not in proc.stderr


def test_4d_files_whose_names_end_in_four_digits_are_not_nnunet(data, tmp_path):
    folder = tmp_path / "patients"
    folder.mkdir()
    for i, f in enumerate(sorted(data["nifti4d"].iterdir())):
        shutil.copy(f, folder / f"patient_{i:04d}.nii.gz")
    assert detect_layout(folder) == "nifti4d"
    items, layout = discover_inputs(folder, "auto", CHANNELS)
    assert layout == "nifti4d" and [i.name for i in items] == ["patient_0000", "patient_0001", "patient_0002"]
