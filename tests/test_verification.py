"""``prepare`` verifies the whole dataset first: one test per refused input class (message names the
file and the problem), every problem of a case listed, strict vs ``skip_bad``, and the cache."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY, run_medseg
from medseg.data.sources import make_source
from medseg.data.synthetic import SynthConfig
from medseg.data.synthetic_formats import write_brats_dataset

CFG = SynthConfig(n=5, n_test=0, spacing=6.0, seed=11, tumour_free_fraction=0.0)


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    """Five clean BraTS 2021 cases at 6 mm. Read-only: tests edit copies."""
    return write_brats_dataset(tmp_path_factory.mktemp("brats") / "BraTS", CFG, "brats2021", workers=1)


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "BraTS"
    shutil.copytree(root, out)
    return out


def _file(root: Path, case: int, suffix: str) -> Path:
    folder = sorted(p for p in root.iterdir() if p.is_dir())[case]
    return folder / f"{folder.name}_{suffix}.nii.gz"


def _rewrite(path: Path, data=None, affine=None) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def _missing(root):
    p = _file(root, 0, "t1")
    p.unlink()
    return p, "file not found"


def _label_shape(root):
    p = _file(root, 0, "seg")
    _rewrite(p, np.asarray(nib.load(p).dataobj)[:-1])
    return p, "label shape"


def _spacing(root):
    p = _file(root, 0, "t2")
    img = nib.load(p)
    _rewrite(p, affine=img.affine @ np.diag([1.2, 1, 1, 1]))
    return p, "mm differs from"


def _affine(root):
    p = _file(root, 0, "t1ce")
    a = nib.load(p).affine.copy()
    a[:3, 3] += 5.0
    _rewrite(p, affine=a)
    return p, "affine (origin/orientation) differs by up to 5 mm"


def _nan(root):
    p = _file(root, 0, "flair")
    d = np.asarray(nib.load(p).dataobj).astype(np.float32)
    d[1, 2, 3] = np.nan
    d[2, 2, 3] = np.inf
    _rewrite(p, d)
    return p, "2 voxels are NaN or infinite"


def _label_values(root):
    p = _file(root, 0, "seg")
    d = np.asarray(nib.load(p).dataobj).copy()
    d[0, 0, 0], d[0, 0, 1] = 3, 7
    _rewrite(p, d)
    return p, "label values [3, 7] are not in the brats2021 convention"


def _empty(root):
    p = _file(root, 0, "t1ce")
    _rewrite(p, np.zeros(nib.load(p).shape, dtype=np.int16))
    return p, "channel 't1gd' is empty (every voxel is zero)"


def _budget(root):
    p = _file(root, 0, "t2")
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[40:48] = struct.pack("<4h", 3, 4096, 4096, 4096)  # dim[0..3]: 68.7 G voxels promised
    p.write_bytes(gzip.compress(bytes(raw)))
    return p, "exceed the budget of"


def _truncated(root):
    p = _file(root, 0, "flair")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p, "truncated gzip stream"


def _unreadable(root):
    p = _file(root, 0, "seg")
    p.write_bytes(b"this is not a NIfTI file at all" * 20)
    return p, "not a readable NIfTI file"


CLASSES = {"missing-file": _missing, "label-shape": _label_shape, "spacing-mismatch": _spacing,
           "affine-mismatch": _affine, "nan-inf": _nan, "label-values": _label_values, "empty-image": _empty,
           "header-budget": _budget, "truncated": _truncated, "unreadable": _unreadable}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_each_refused_input_class_names_file_and_problem(brats_root, tmp_path, kind):
    root = _copy(brats_root, tmp_path)
    path, message = CLASSES[kind](root)
    src = make_source("brats", str(root), convention="auto", max_voxels=10**8)
    refs = src.cases()
    case, problems = src.check(refs[0])
    assert case is None
    assert any(str(path) in p and message in p for p in problems), problems
    assert all(src.check(r)[1] == [] for r in refs[1:])


def test_every_problem_of_a_case_is_listed(brats_root, tmp_path):
    root = _copy(brats_root, tmp_path)
    found = [CLASSES[k](root) for k in ("nan-inf", "affine-mismatch", "label-values")]
    src = make_source("brats", str(root), convention="auto")
    _, problems = src.check(src.cases()[0])
    for path, message in found:
        assert any(str(path) in p and message in p for p in problems), problems


def test_channel_count_in_datalist(brats_root, tmp_path):
    root = _copy(brats_root, tmp_path)
    name = sorted(p.name for p in root.iterdir())[0]
    (root / "dl.json").write_text(json.dumps({"training": [
        {"image": [f"{name}/{name}_{s}.nii.gz" for s in ("flair", "t1", "t1ce")],
         "label": f"{name}/{name}_seg.nii.gz"}]}))
    src = make_source("nifti", str(root), channels=["a", "b", "c", "d"], datalist="dl.json")
    _, problems = src.check(src.cases()[0])
    assert problems == [f"{root / name / (name + '_flair.nii.gz')}: expected 4 channel files, got 3"]


def _prepare(root: Path, cwd: Path, *extra: str):
    args = ["prepare", "data=brats", f"data.root={root}", f"paths.cache_dir={cwd / 'cache'}",
            "hydra.run.dir=out", *TINY, *extra]
    return run_medseg(args, cwd)


def test_strict_stops_with_every_problem_and_skip_bad_quarantines(brats_root, tmp_path):
    root = _copy(brats_root, tmp_path)
    nan_path, _ = _nan(root)
    seg = _file(root, 2, "seg")
    d = np.asarray(nib.load(seg).dataobj).copy()
    d[0, 0, 0] = 9
    _rewrite(seg, d)
    proc = _prepare(root, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln][-1]
    assert "2 of 5 cases failed verification with 2 problem(s)" in last and str(nan_path) in last
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} <= {".hydra", "prepare.log", "verification.json", "verification.txt"}
    report = json.loads((out / "verification.json").read_text())
    assert report["n_bad"] == 2 and report["n_ok"] == 3
    bad = {c["name"]: c["problems"] for c in report["cases"] if not c["ok"]}
    assert any(str(seg) in p and "label values [9]" in p for p in bad[seg.parent.name])

    shutil.rmtree(out)
    proc = _prepare(root, tmp_path, "data.skip_bad=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "quarantined 2 of 5 cases" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["quarantined"]) == sorted([nan_path.parent.name, seg.parent.name])
    datalist = json.loads((out / "datalist.json").read_text())
    names = {e["name"] for split in datalist.values() for e in split}
    assert names and not names & set(summary["quarantined"])


def test_cache_is_reused_and_only_changed_cases_rebuild(brats_root, tmp_path):
    root = _copy(brats_root, tmp_path)
    proc = _prepare(root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert first["reused_from_cache"] == 0 and first["cases"] == 5
    shutil.rmtree(tmp_path / "out")
    proc = _prepare(root, tmp_path)
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert again["reused_from_cache"] == 5 and again["cache"] == first["cache"]
    report = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert all(c["verified_from_cache"] for c in report["cases"])
    # change one file of one case: only that case is decoded and preprocessed again
    p = _file(root, 1, "t2")
    d = np.asarray(nib.load(p).dataobj).copy()
    d[d > 0] += 1
    _rewrite(p, d)
    shutil.rmtree(tmp_path / "out")
    proc = _prepare(root, tmp_path)
    third = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert third["reused_from_cache"] == 4 and third["cache"] == first["cache"]
    # a preprocessing change makes a new cache
    shutil.rmtree(tmp_path / "out")
    proc = _prepare(root, tmp_path, "data.crop_foreground=false")
    fourth = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert fourth["cache"] != first["cache"] and fourth["reused_from_cache"] == 0
    entries = list(Path(first["cache"]).iterdir())
    assert len(entries) == 6 and all((e / "meta.json").is_file() for e in entries)  # 5 + the rebuilt one


def test_dicom_prepare_lists_series_problems_and_skips_bad_studies(tmp_path):
    from medseg.data.synthetic_formats import write_dicom_dataset

    root = write_dicom_dataset(tmp_path / "dcm", SynthConfig(n=3, spacing=6.0, seed=8), workers=1)
    flair = sorted((root / "dicom" / "SUBJ002").glob("*/SE002/IM*"))
    flair[len(flair) // 2].unlink()  # a slice lost in transfer
    (root / "dicom" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    args = ["prepare", "data=dicom", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=out", *TINY, "data.workers=2"]
    proc = run_medseg(args, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    report = json.loads((tmp_path / "out" / "verification.json").read_text())
    assert any("broken.dcm: not a readable DICOM file" in p for p in report["dataset_problems"])
    bad = {c["name"]: c["problems"] for c in report["cases"] if not c["ok"]}
    assert list(bad) == ["SUBJ002"] and "missing slice(s)" in bad["SUBJ002"][0]
    assert "(channel 'FLAIR')" in bad["SUBJ002"][0]
    shutil.rmtree(tmp_path / "out")
    proc = run_medseg([*args, "data.skip_bad=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["quarantined"] == ["SUBJ002"] and summary["cases"] == 2
