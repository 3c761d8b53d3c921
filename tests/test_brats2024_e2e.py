"""A built-in dataset re-coded to BraTS 2024 post-treatment glioma (with resection cavities):
prepare, train and evaluate handle the fifth label, and evaluate scores it with the BraTS 2025
lesion-wise rules when asked."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY, run_medseg
from medseg.data.labels import CONVENTIONS
from medseg.models.checkpoint import load_checkpoint

TO_GLI_2024 = {v: k for k, v in CONVENTIONS["brats2024_gli"].items()}


def _recode_with_cavity(src, dst):
    """Copy an MSD-layout dataset, re-code every label file to BraTS 2024 GLI codes and carve a
    resection cavity (code 4) into the background next to the tumour of each case."""
    shutil.copytree(src, dst)
    for path in sorted((dst / "labelsTr").glob("*.nii.gz")) + sorted((dst / "labelsTs").glob("*.nii.gz")):
        img = nib.load(path)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        out = np.vectorize(TO_GLI_2024.get)(lab).astype(np.uint8)
        centre = np.array(np.nonzero(lab)).mean(axis=1) if lab.any() else np.array(lab.shape) / 2
        grid = np.indices(lab.shape).transpose(1, 2, 3, 0)
        ball = np.linalg.norm(grid - (centre + np.array([4, 0, 0])), axis=-1) <= 3
        out[ball & (lab == 0)] = 4
        nib.save(nib.Nifti1Image(out, img.affine, img.header), str(path))
    return dst


@pytest.mark.slow
def test_prepare_train_evaluate_with_a_resection_cavity(tiny_dataset, tmp_path):
    data = _recode_with_cavity(tiny_dataset, tmp_path / "gli2024")
    proc = run_medseg(["run", f"data.root={data}", "data.convention=brats2024_gli", "hydra.run.dir=out",
                       "evaluate.lesion_convention=brats2025", "export.onnx=false", "export.bundle=false", *TINY],
                      tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    plan = json.loads((out / "prepare" / "plan.json").read_text())
    assert plan["labels"]["labels"]["4"] == "resection cavity"
    _, meta = load_checkpoint(next((out / "train").rglob("*.pt")))
    assert meta.num_classes == 5  # the number of classes follows the label set
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert metrics["convention"]["lesion_convention"] == "brats2025"
    assert set(metrics["regions"]) >= {"resection_cavity", "whole_tumour", "surrounding_hyperintensity"}
    assert "label4_resection_cavity" in metrics["summary"]
    assert metrics["summary"]["resection_cavity"]["dice"]["n"] > 0
    report = next((out / "evaluate").glob("report.*")).read_text()
    assert "resection_cavity" in report and "lesion_convention=brats2025" in report
    predicted = nib.load(next((out / "predict").glob("*.nii.gz")))
    assert set(np.unique(np.asarray(predicted.dataobj)).tolist()) <= {0, 1, 2, 3, 4}  # written in GLI 2024 codes
