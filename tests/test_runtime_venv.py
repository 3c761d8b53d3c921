"""`medseg-predict` from the artifact alone in a fresh venv with only the runtime dependencies
(numpy, scipy, nibabel, pydicom, torch, onnxruntime; no MONAI, no Hydra). Slow: it builds a venv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO

TOP_LEVEL_SKIP = {"__pycache__", "build"}
RUNTIME = ["numpy", "scipy", "nibabel", "pydicom", "torch==2.13.0", "onnxruntime"]


@pytest.mark.slow
def test_predict_in_a_fresh_runtime_only_venv(run_dir, tiny_dataset, tmp_path):
    venv = tmp_path / "rt"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt")]
    subprocess.run([*pip, *RUNTIME], check=True, timeout=900)
    src = tmp_path / "src"  # a copy, so that building the wheel leaves nothing in the checkout
    shutil.copytree(REPO, src, ignore=lambda folder, names: [n for n in names if n in TOP_LEVEL_SKIP or (
        Path(folder) == REPO and n not in ("medseg", "conf", "pyproject.toml", "README.md"))])
    subprocess.run([*pip, "--no-deps", str(src)], check=True, timeout=900)
    for absent in ("monai", "hydra", "omegaconf"):
        probe = subprocess.run([str(py), "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"{absent} is importable in the runtime venv"
    artifact = run_dir / "export" / "artifact"
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        proc = subprocess.run([str(venv / "bin" / "medseg-predict"), str(artifact), str(tiny_dataset / "imagesTs"),
                               str(out), "--backend", backend], capture_output=True, text=True, cwd=tmp_path,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((out / "predictions.json").read_text())["n_ok"] == 2
        for src in (tiny_dataset / "imagesTs").glob("*.nii.gz"):
            pred, img = nib.load(out / src.name), nib.load(src)
            assert pred.shape == img.shape[:3]
            np.testing.assert_allclose(pred.affine, img.affine, atol=1e-5)
