"""Shared fixtures: tiny built-in datasets written to temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.data.synthetic import SynthConfig, write_msd_dataset

REPO = Path(__file__).resolve().parent.parent
MEDSEG = [sys.executable, "-m", "medseg"]
#: The venv of the outside judges that run in their own processes (MONAI's bundle runner, the Optuna
#: sweeper): `make judges`, tests/judges.txt. Layered on the project venv, so medseg runs there too.
JUDGES_PYTHON = REPO / ".venv-judges" / "bin" / "python"

#: Overrides that make any stage tiny: 4 mm voxels, 32^3 patches, a 3-level U-Net, few iterations.
TINY = [
    "data.target_spacing=[4.0,4.0,4.0]",
    "data.workers=1",
    "model.channels=[8,16,32]",
    "model.strides=[2,2]",
    "model.num_res_units=0",
    "train.patch_size=[32,32,32]",
    "train.max_epochs=2",
    "train.iters_per_epoch=3",
    "train.warmup_iters=2",
    "train.progress=false",
    "train.tensorboard=true",
    "evaluate.n_figures=1",
    "train.augment.channel_dropout_prob=0.0",  # tiny artifacts accept only the full channel set
]

TINY_SYNTH = SynthConfig(n=6, n_test=2, spacing=4.0, seed=3)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 4 mm cases (two test cases, one of them tumour-free) in MSD layout. Read-only!"""
    return write_msd_dataset(tmp_path_factory.mktemp("tiny") / "Task01_Tiny", TINY_SYNTH)


def run_medseg(args: list[str], cwd: Path, timeout: int = 600, python: str | Path = sys.executable,
               ) -> subprocess.CompletedProcess:
    """Run the ``medseg`` command in a subprocess (of ``python``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(python), "-m", "medseg", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def judges_python() -> Path:
    """The outside judges' interpreter (``make test`` installs it; skipped where it is missing)."""
    if not JUDGES_PYTHON.exists():
        pytest.skip(f"{JUDGES_PYTHON.parent.parent.name} is missing: make judges")
    return JUDGES_PYTHON


@pytest.fixture(scope="session")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medseg prepare`` of the tiny dataset with the TINY settings. Read-only!"""
    cwd = tmp_path_factory.mktemp("prep")
    proc = run_medseg(["prepare", f"data.root={tiny_dataset}", "hydra.run.dir=prep", *TINY], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd / "prep"


@pytest.fixture(scope="session")
def run_dir(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medseg run`` on the tiny dataset (prepare, train, evaluate, export, predict). Read-only!"""
    cwd = tmp_path_factory.mktemp("e2e")
    proc = run_medseg(["run", f"data.root={tiny_dataset}", "hydra.run.dir=out", *TINY], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "out"
