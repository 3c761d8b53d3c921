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


# ---- issue 15: every malformed input refused in one line -------------------------------------------

import gzip
import json
import os
import subprocess
import sys

from conftest import MEDSEG, REPO

CHANNELS = ["data.source=nifti", "data.channels=[flair,t1,t1gd,t2]"]


def _run_measured(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``medseg`` through a fresh launcher and return its result and the peak RSS (bytes) of
    the medseg process tree (``RUSAGE_CHILDREN`` of the launcher, so earlier tests do not count)."""
    launcher = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
                "sys.stderr.write(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n'); "
                "sys.exit(p.returncode)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-c", launcher, *MEDSEG, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
    return proc, peak_kb * 1024


def _write_bomb(path, like, payload_gb: float) -> int:
    """A gzip NIfTI whose header copies ``like``'s (honest, small) shape but whose stream holds
    ``payload_gb`` GB: the image, then gzip members of zeros. Returns the promised byte count."""
    img = nib.load(like)
    head = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header).to_bytes()
    block = bytes(1 << 24)
    zeros = gzip.compress(block, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(int(payload_gb * 1024 ** 3) // len(block)):
            f.write(zeros)
    return len(head)


def test_gzip_bomb_stops_within_the_header_budget(tiny_dataset, tmp_path):
    """A stream that outgrows its header (2 GB of zeros behind a 0.2 MB image) stops early."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    target = data / "imagesTr" / "BRATS_002.nii.gz"
    _write_bomb(target, tiny_dataset / "imagesTr" / "BRATS_002.nii.gz", payload_gb=2.0)
    proc, peak = _run_measured(["prepare", f"data.root={data}", "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "BRATS_002.nii.gz: gzip stream holds more than the")
    assert peak < 1.5 * 1024 ** 3, f"peak RSS {peak / 1024 ** 2:.0f} MB: the bomb was inflated"


def _datalist_dataset(tiny_dataset, tmp_path, datalist) -> list[str]:
    """A copy of the tiny dataset read through a datalist (``nifti`` source)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "datalist.json").write_text(json.dumps(datalist))
    return [f"data.root={data}", "data.datalist=datalist.json", *CHANNELS]


def _entry(name: str, split: str = "Tr") -> dict:
    return {"image": f"images{split}/{name}.nii.gz", "label": f"labels{split}/{name}.nii.gz"}


@pytest.mark.parametrize("datalist,messages", [
    ({"validation": [_entry("BRATS_001")]}, ["missing the 'training' key"]),
    ({"training": [{"label": "labelsTr/BRATS_001.nii.gz"}, {"image": "imagesTr/BRATS_002.nii.gz"},
                   {"image": 3, "label": ["x"]}], "test": {"image": "a"}},
     ["training[0] has no 'image'", "training[1] has no 'label'", "training[2] 'image' must be a path",
      "training[2] 'label' must be a path, got a list of 1", "'test' must be a list, got an object"]),
    ([_entry("BRATS_001")], ["expected a JSON object with a 'training' list, got a list of 1"]),
], ids=["no-training", "entries-and-types", "not-an-object"])
def test_datalist_schema_lists_every_problem_in_one_line(tiny_dataset, tmp_path, datalist, messages):
    root = _datalist_dataset(tiny_dataset, tmp_path, datalist)
    proc = run_medseg(["prepare", *root, "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "datalist.json: not a valid datalist")
    line = _error_lines(proc.stderr)[-1]
    assert all(m in line for m in messages), line


def test_escaping_paths_are_reported_not_name_clashes(tiny_dataset, tmp_path):
    """Two entries escaping the root with the same file name: the escape is reported (by
    verification, naming the datalist), never 'duplicate case names'."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tiny_dataset / "imagesTr" / "BRATS_001.nii.gz", outside / "BRATS_009.nii.gz")
    escaping = {"image": "../outside/BRATS_009.nii.gz", "label": "labelsTr/BRATS_001.nii.gz"}
    root = _datalist_dataset(tiny_dataset, tmp_path, {"training": [_entry("BRATS_001"), escaping, escaping]})
    proc = run_medseg(["prepare", *root, "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "escapes the dataset folder")
    assert "duplicate case names" not in proc.stderr


def test_symlink_loop_in_datalist_is_one_line(tiny_dataset, tmp_path):
    root = _datalist_dataset(tiny_dataset, tmp_path, {"training": [
        _entry("BRATS_001"), {"image": "loop_a", "label": "labelsTr/BRATS_002.nii.gz"}]})
    data = tmp_path / "data"
    os.symlink(data / "loop_a", data / "loop_b")
    os.symlink(data / "loop_b", data / "loop_a")
    proc = run_medseg(["prepare", *root, "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "path 'loop_a' loops through symlinks")


def test_truncated_uncompressed_nifti_is_one_line(tiny_dataset, tmp_path):
    root = _datalist_dataset(tiny_dataset, tmp_path, {"training": [
        _entry("BRATS_001"), {"image": "imagesTr/BRATS_002.nii", "label": "labelsTr/BRATS_002.nii.gz"}]})
    data = tmp_path / "data"
    img = nib.load(data / "imagesTr" / "BRATS_002.nii.gz")
    raw = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header).to_bytes()
    (data / "imagesTr" / "BRATS_002.nii").write_bytes(raw[: len(raw) // 2])
    proc = run_medseg(["prepare", *root, "hydra.run.dir=out", *TINY], tmp_path)
    _assert_clean_failure(proc, tmp_path / "out", "BRATS_002.nii: truncated: the header promises")


def test_memory_exhaustion_is_one_line_naming_the_file(tiny_dataset, tmp_path):
    """Out of memory while decoding (address space capped below what the header promises, which
    data.max_voxels allows): one line naming the file, not a MemoryError traceback."""
    from medseg.data.io.nifti import read_nifti

    big = tmp_path / "big.nii.gz"
    shape = (2048, 2048, 512)  # 4 GB of uint16 promised (under the raised voxel cap); the stream is short
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint16)
    hdr.set_qform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    with gzip.open(big, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + bytes(1 << 20))
    code = ("import resource, sys; from medseg.data.io.nifti import read_nifti; "
            "from medseg.errors import MedsegError; "
            "resource.setrlimit(resource.RLIMIT_AS, (1536 * 1024 ** 2, 1536 * 1024 ** 2))\n"
            "try:\n    read_nifti(sys.argv[1], max_voxels=2 ** 32)\n"
            "except MedsegError as e:\n    print(e)\n    sys.exit(2)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    out = proc.stdout.strip()
    assert "\n" not in out and out.startswith(f"{big}: ") and "out of memory" in out, out
    assert read_nifti  # the same reader every stage uses


def test_library_messages_are_folded_onto_one_line():
    from medseg.errors import DataError, MedsegError, case_error

    e = DataError("a.nii", "Expected 10 bytes, got 5\n - could the file be damaged?")
    assert str(e) == "a.nii: Expected 10 bytes, got 5 - could the file be damaged?"
    assert "\n" not in str(MedsegError("x\ny"))
    assert str(case_error("case.nii.gz", MemoryError())) == (
        "case.nii.gz: out of memory while processing this case")
