"""How medseg is packaged: every subpackage and the Hydra configs ship in the wheel, ``pipelines/``
does not, and the ``medseg`` command works from any folder.

The slow test builds the wheel, installs it (not editable, with the constraints) into a fresh venv
and runs the pipeline from an empty folder, as a new user would after ``pip install medseg``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

#: What the wheel is built from (a copy, so that building leaves nothing in the checkout).
SOURCES = ("medseg", "conf", "pyproject.toml", "README.md")


def _listed_packages() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["tool"]["setuptools"]["packages"])


def test_every_subpackage_is_listed_and_conf_ships_as_medseg_conf():
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "medseg").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    listed = _listed_packages()
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert "medseg.conf" in listed and not any(p.startswith("pipelines") for p in listed)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    # every config group folder is a listed (data-only) package whose YAML files ship: a new group
    # not listed would be left out of the wheel, or ship with setuptools' "absent from packages" warning
    groups = {".".join(("medseg", "conf", *p.relative_to(REPO / "conf").parts)) for p in (REPO / "conf").rglob("*")
              if p.is_dir() and any(p.glob("*.yaml"))}
    assert groups <= listed, f"add to [tool.setuptools] packages: {sorted(groups - listed)}"
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert all(data.get(g) == ["*.yaml"] for g in groups | {"medseg.conf"}), data
    assert pyproject["tool"]["setuptools"]["package-dir"]["medseg.conf"] == "conf"
    assert pyproject["project"]["scripts"] == {"medseg": "medseg.cli:main",
                                               "medseg-predict": "medseg.inference.cli:main"}


def test_configs_resolve_through_the_package_not_a_checkout_path(tmp_path):
    from importlib.resources import files

    conf = files("medseg.conf")
    assert (conf / "config.yaml").is_file() and (conf / "experiment" / "demo.yaml").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "medseg", "train", "--cfg", "job", "experiment=demo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: demo" in proc.stdout and "max_time_s: 270" in proc.stdout


def test_pipeline_scripts_run_from_a_checkout(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "train.max_epoch=3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "Did you mean 'train.max_epochs'?" in proc.stderr


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_the_pipeline_from_any_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist),
          str(src)], tmp_path, dict(os.environ))
    wheel = next(dist.glob("medseg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medseg/conf/config.yaml" in names and "medseg/conf/experiment/demo.yaml" in names
    assert not any(n.startswith("pipelines/") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, dict(os.environ))
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([str(py), "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"), str(wheel)],
         tmp_path, dict(os.environ), timeout=1500)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "empty"  # no checkout anywhere near
    work.mkdir()
    site = _run([str(py), "-c", "import medseg, pathlib; print(pathlib.Path(medseg.__file__).parent)"], work, env)
    assert "site-packages" in site.stdout and str(REPO) not in site.stdout
    assert "medseg <stage>" in _run([str(py), "-m", "medseg", "--help"], work, env).stdout
    _run(["medseg", "synth", "data", "n=5", "n_test=1", "spacing=4.0", "seed=2"], work, env)
    tiny = ["data.target_spacing=[4.0,4.0,4.0]", "data.workers=1", "model.channels=[8,16,32]", "model.strides=[2,2]",
            "model.num_res_units=0", "train.patch_size=[32,32,32]", "train.max_epochs=1", "train.iters_per_epoch=2",
            "train.warmup_iters=1", "train.progress=false", "train.tensorboard=false"]
    _run(["medseg", "prepare", f"data.root={work / 'data'}", "hydra.run.dir=prep", *tiny], work, env)
    _run(["medseg", "train", "paths.prepared=prep", "hydra.run.dir=train", *tiny], work, env)
    _run(["medseg", "export", "paths.checkpoint=train/best.pt", "paths.prepared=prep", "export.onnx=false",
          "export.bundle=false", "hydra.run.dir=export"], work, env)
    _run(["medseg", "predict", "paths.artifact=export/artifact", f"paths.input={work / 'data' / 'imagesTs'}",
          "hydra.run.dir=predict"], work, env)
    summary = json.loads((work / "predict" / "predictions.json").read_text())
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0
