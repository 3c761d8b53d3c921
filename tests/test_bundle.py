"""The exported MONAI bundle run by MONAI's own runner (``python -m monai.bundle run``), against
``medseg-predict`` on the same inputs, in every voxel axis order medseg accepts.

The network is the tiny run's U-Net with freshly drawn (seeded) weights, exported by the real
``medseg export`` stage: the trained tiny model predicts background almost everywhere, so agreement
on its output proves little, while random weights (background bias +0.5: some 6-9 % foreground in
many pieces) put every label in fragments everywhere and make every step (resampling,
normalisation, window blending, decoding, small-component removal, inversion) show.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel import orientations as ornt

from conftest import REPO, run_medseg

ORIENTATIONS = ("RAS", "LAS", "LPS", "PSR")
MIN_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def artifact(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact (with its bundle) of the tiny run's network with seeded random weights."""
    from medseg.models.checkpoint import load_checkpoint, save_checkpoint
    from medseg.models.unet import build_model

    _, meta = load_checkpoint(run_dir / "train" / "best.pt")
    torch.manual_seed(0)
    model = build_model(meta.model, meta.in_channels, meta.num_classes, inference=True)
    last_bias = [p for n, p in model.named_parameters() if n.endswith("bias") and p.shape == (meta.num_classes,)][-1]
    with torch.no_grad():
        last_bias[0] += 0.5  # background: fragmented foreground, so that component removal matters
    work = tmp_path_factory.mktemp("bundle_export")
    save_checkpoint(work / "random.pt", model, meta)
    proc = run_medseg(["export", f"paths.checkpoint={work / 'random.pt'}", "export.onnx=false",
                       "hydra.run.dir=export"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "export" / "artifact"


def reorient(src: Path, dst: Path, codes: str) -> None:
    """Write ``src`` (3D or 4D NIfTI) with its voxel axes reordered/flipped to ``codes`` (same world)."""
    img = nib.load(src)
    data = np.asarray(img.dataobj)
    transform = ornt.ornt_transform(ornt.io_orientation(img.affine), ornt.axcodes2ornt(tuple(codes)))
    affine = img.affine @ ornt.inv_ornt_aff(transform, data.shape[:3])
    out = nib.Nifti1Image(np.ascontiguousarray(ornt.apply_orientation(data, transform)), affine)
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    nib.save(out, dst)


def write_cases(images: list[Path], folder: Path, orientations: tuple[str, ...]) -> list[str]:
    """Every image in every orientation, as ``<case>_<ORIENTATION>.nii.gz``; their case names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for image in images:
        for codes in orientations:
            name = f"{image.name.split('.')[0]}_{codes}"
            reorient(image, folder / f"{name}.nii.gz", codes)
            names.append(name)
    return names


def run_bundle(python: str | Path, bundle: Path, inputs: Path, out: Path, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess:
    """The command the bundle's docs/README.md gives, run by ``python``."""
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(out)]
    env = env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=out.parent)


def medseg_predict(artifact: Path, inputs: Path, out: Path, *extra: str) -> None:
    """``medseg-predict`` with its defaults (the reference)."""
    proc = subprocess.run([sys.executable, "-m", "medseg.inference.cli", str(artifact), str(inputs), str(out),
                           "--threads", "2", *extra], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]


def agreement(names: list[str], inputs: Path, bundle_out: Path, reference: Path) -> dict[str, float]:
    """Voxel agreement per case; both outputs must lie on the input's grid (shape and affine)."""
    found = {}
    for name in names:
        source = nib.load(inputs / f"{name}.nii.gz")
        mine, ref = nib.load(bundle_out / f"{name}.nii.gz"), nib.load(reference / f"{name}.nii.gz")
        assert mine.shape == ref.shape == source.shape[:3], name
        np.testing.assert_allclose(mine.affine, source.affine, atol=1e-4, err_msg=name)
        a, b = np.asarray(mine.dataobj), np.asarray(ref.dataobj)
        assert a.dtype == np.uint8 and len(np.unique(b)) >= 3, (name, np.unique(b))  # a real comparison
        found[name] = float((a == b).mean())
    return found


def test_bundle_runs_under_monai_runner_like_medseg_predict_on_a_psr_case(artifact, tiny_dataset, tmp_path, judges_python):
    inputs = tmp_path / "images"
    names = write_cases(sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[:1], inputs, ("PSR",))
    proc = run_bundle(judges_python, artifact / "medseg_bundle", inputs, tmp_path / "bundle")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    medseg_predict(artifact, inputs, tmp_path / "medseg")
    found = agreement(names, inputs, tmp_path / "bundle", tmp_path / "medseg")
    assert min(found.values()) >= MIN_AGREEMENT, found


def test_bundle_applies_the_small_enhancing_rule_like_medseg_predict(artifact, tiny_dataset, tmp_path,
                                                                     judges_python):
    """The same random network exported with a threshold (50 ml) above every case's predicted
    enhancing volume (a few ml here): medseg-predict and the bundle both relabel it all as tumour
    core, where the artifact without it (the test above) predicts enhancing tumour."""
    proc = run_medseg(["export", f"paths.checkpoint={artifact.parent.parent / 'random.pt'}", "export.onnx=false",
                       "evaluate.inference.min_enhancing_ml=50", "hydra.run.dir=export_rule"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ruled = tmp_path / "export_rule" / "artifact"
    post = json.loads((ruled / "metadata.json").read_text())["postprocessing"]
    assert post["min_enhancing_ml"] == 50.0 and post["enhancing_fit"] is None  # configured, not fitted
    inputs = tmp_path / "images"
    names = write_cases(sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[:1], inputs, ("LPS",))
    medseg_predict(artifact, inputs, tmp_path / "without")
    assert (np.asarray(nib.load(tmp_path / "without" / f"{names[0]}.nii.gz").dataobj) == 3).any()
    proc = run_bundle(judges_python, ruled / "medseg_bundle", inputs, tmp_path / "bundle")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    medseg_predict(ruled, inputs, tmp_path / "medseg")
    found = agreement(names, inputs, tmp_path / "bundle", tmp_path / "medseg")
    assert min(found.values()) >= MIN_AGREEMENT, found
    for out in ("bundle", "medseg"):
        assert not (np.asarray(nib.load(tmp_path / out / f"{names[0]}.nii.gz").dataobj) == 3).any(), out
    summary = json.loads((tmp_path / "medseg" / "predictions.json").read_text())
    assert all(c["enhancing_relabelled_ml"] > 0 for c in summary["cases"]), summary["cases"]
    assert "RelabelSmallEnhancingd" in (ruled / "medseg_bundle" / "docs" / "README.md").read_text()


def test_bundle_refuses_a_wrong_image_naming_the_file(artifact, tiny_dataset, tmp_path, judges_python):
    inputs = tmp_path / "images"
    inputs.mkdir()
    img = nib.load(sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))[0])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), inputs / "three_channels.nii.gz")
    proc = run_bundle(judges_python, artifact / "medseg_bundle", inputs, tmp_path / "out")
    assert proc.returncode != 0
    assert "three_channels.nii.gz: expected 4 channels (FLAIR, T1w, t1gd, T2w)" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nii*"))  # nothing partial


def test_metadata_declares_every_package_the_bundle_imports(artifact):
    bundle = artifact / "medseg_bundle"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    declared = {"monai", "torch", "numpy", *meta["required_packages_version"]}
    assert "optional_packages_version" not in meta  # MONAI would replace the required list with it
    assert {"nibabel", "pytorch-ignite", "fire", "scipy"} <= set(meta["required_packages_version"])
    assert all(meta[k] for k in ("monai_version", "pytorch_version", "numpy_version"))
    assert all(v for v in meta["required_packages_version"].values())
    tree = ast.parse((bundle / "scripts" / "components.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} <= declared
    config = (bundle / "configs" / "inference.json").read_text()
    assert "medseg" not in config.replace("medseg_bundle", "").replace("medseg's", "")  # no medseg import
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run --config_file medseg_bundle/configs/inference.json" in readme
    assert "--bundle_root medseg_bundle" in readme


def test_component_removal_equals_medseg_s():
    from monai.data import MetaTensor

    from medseg.export.bundle_components import RemoveSmallComponentsd
    from medseg.inference.predictor import remove_small_components

    rng = np.random.default_rng(0)
    label = (rng.random((20, 18, 16)) > 0.8).astype(np.uint8) * rng.integers(1, 4, (20, 18, 16)).astype(np.uint8)
    affine = np.array([[0.0, 0.0, 1.2, 0.0], [-0.9, 0.0, 0.0, 0.0], [0.0, 2.5, 0.0, 0.0], [0, 0, 0, 1]])
    pred = MetaTensor(torch.from_numpy(label)[None], affine=torch.from_numpy(affine),
                      meta={"original_affine": affine})
    mine = RemoveSmallComponentsd("pred", min_ml=0.01)({"pred": pred})["pred"]
    ref = remove_small_components(label, np.linalg.norm(affine[:3, :3], axis=0), 0.01)
    assert (ref != label).any() and (ref > 0).any()  # some components go, some stay
    np.testing.assert_array_equal(np.asarray(mine[0]), ref)


def test_grid_writer_keeps_a_permuted_affine(tmp_path):
    """MONAI's own SaveImage(resample=False) fails on a PSR affine (2-D slice of it); GridWriter does not."""
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    from medseg.export.bundle_components import GridWriter

    affine = np.array([[0.0, 0.0, 1.5, -10.0], [-2.0, 0.0, 0.0, 20.0], [0.0, 3.0, 0.0, -5.0], [0, 0, 0, 1]])
    data = np.random.default_rng(1).integers(0, 4, (1, 7, 6, 5)).astype(np.float32)
    img = MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(affine),
                     meta={"original_affine": affine, "spatial_shape": np.array([7, 6, 5]),
                           "filename_or_obj": str(tmp_path / "case_PSR.nii.gz")})
    SaveImage(output_dir=str(tmp_path / "out"), output_postfix="", output_ext=".nii.gz", output_dtype=np.uint8,
              resample=False, separate_folder=False, writer=GridWriter)(img)
    back = nib.load(tmp_path / "out" / "case_PSR.nii.gz")
    np.testing.assert_allclose(back.affine, affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data[0].astype(np.uint8))


@pytest.mark.slow
def test_bundle_in_a_venv_of_only_its_declared_packages_agrees_in_every_orientation(
        artifact, tiny_dataset, tmp_path, record_property):
    bundle = artifact / "medseg_bundle"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"],
            **meta["required_packages_version"]}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *(f"{n}=={v}" for n, v in pins.items())],
                         capture_output=True, text=True, timeout=1800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "2"}
    probe = subprocess.run([str(python), "-c", "import medseg"], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert probe.returncode != 0  # the venv holds only what the metadata lists
    images = sorted((tiny_dataset / "imagesTr").glob("*.nii.gz")) + sorted((tiny_dataset / "imagesTs").glob("*.nii.gz"))
    inputs = tmp_path / "images"
    names = write_cases(images, inputs, ORIENTATIONS)
    proc = run_bundle(python, bundle, inputs, tmp_path / "bundle", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    medseg_predict(artifact, inputs, tmp_path / "medseg")
    found = agreement(names, inputs, tmp_path / "bundle", tmp_path / "medseg")
    record_property("agreement", json.dumps(found))
    per_orientation = {o: min(v for k, v in found.items() if k.endswith(o)) for o in ORIENTATIONS}
    assert min(found.values()) >= MIN_AGREEMENT, per_orientation
    medseg_predict(artifact, inputs, tmp_path / "kept", "--min-component-ml", "0")
    removal = agreement(names, inputs, tmp_path / "kept", tmp_path / "medseg")
    assert min(removal.values()) < MIN_AGREEMENT, removal  # the agreement includes the component removal
