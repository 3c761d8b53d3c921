"""Bad input: one-line error naming the file, exit status 2, no partial outputs."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY, run_medseg


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line or "error:" in line]


def _assert_clean_failure(proc, out, must_name: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = _error_lines(proc.stderr)
    assert errors and must_name in errors[-1], proc.stderr[-2000:]
    reports = {"verification.json", "verification.txt"}  # complete reports of what is wrong
    leftovers = {p.name for p in out.iterdir()} - {".hydra", "prepare.log", *reports} if out.exists() else set()
    assert not leftovers, f"partial outputs left behind: {leftovers}"
    if out.exists() and (out / "verification.json").exists():
        assert must_name in (out / "verification.json").read_text()


def test_wrong_dataset_path(tmp_path):
    proc = run_medseg(["prepare", "data.root=/no/such/dataset", "hydra.run.dir=out"], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "/no/such/dataset: dataset folder not found")


def _edited_copy(tiny_dataset, tmp_path, rel: str, edit) -> str:
    """Copy the tiny dataset and replace the data of file ``rel`` by ``edit(data)``."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    img = nib.load(data / rel)
    nib.save(nib.Nifti1Image(edit(np.asarray(img.dataobj).copy()), img.affine), str(data / rel))
    return f"data.root={data}"


def _set_corner(lab, value=7):
    lab[0, 0, 0] = value
    return lab


@pytest.mark.parametrize("rel,edit,message", [
    ("labelsTr/BRATS_002.nii.gz", lambda a: a[:-2], "BRATS_002.nii.gz: label shape"),
    ("imagesTr/BRATS_001.nii.gz", lambda a: a[..., :3], "BRATS_001.nii.gz: expected 4 channels"),
    ("labelsTr/BRATS_003.nii.gz", _set_corner, "BRATS_003.nii.gz: label values [7]"),
], ids=["label-shape", "channel-count", "label-value"])
def test_bad_case_stops_prepare(tiny_dataset, tmp_path, rel, edit, message):
    root = _edited_copy(tiny_dataset, tmp_path, rel, edit)
    proc = run_medseg(["prepare", root, "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", message)


def test_unknown_config_key_names_valid_options(tmp_path):
    proc = run_medseg(["train", "train.max_epoch=3"], tmp_path)
    assert proc.returncode == 2
    assert "Did you mean 'train.max_epochs'?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_invalid_choice_names_valid_options(tmp_path):
    proc = run_medseg(["train", "model.norm=group"], tmp_path)
    assert proc.returncode == 2 and "expected one of [instance, batch]" in proc.stderr


def test_synth_command(tmp_path):
    proc = run_medseg(["synth", str(tmp_path / "ds"), "n=2", "n_test=1", "spacing=6"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ds" / "dataset.json").is_file()
    assert len(list((tmp_path / "ds" / "imagesTr").glob("*.nii.gz"))) == 1
    proc = run_medseg(["synth", str(tmp_path / "ds2"), "cases=3"], tmp_path)
    assert proc.returncode == 2 and "unknown option 'cases'" in proc.stderr


def test_unknown_stage(tmp_path):
    proc = run_medseg(["trian"], tmp_path)
    assert proc.returncode == 2 and "Did you mean 'train'?" in proc.stderr
