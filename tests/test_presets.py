"""Every experiment preset (``conf/experiment/*.yaml``) runs ``medseg run`` end to end on a tiny
budget: its own data layout, model group and evaluation settings, with only the sizes shrunk.
Presets meant for a GPU (full-size patches, loader workers) carry the slow marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_medseg

PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
HEAVY = {"brats_msd"}

#: Sizes only: spacing, network width, patch, iterations.
SHRINK_3D = ["data.target_spacing=[4.0,4.0,4.0]", "model.channels=[8,16,32]", "model.strides=[2,2]",
             "train.patch_size=[32,32,32]"]
SHRINK_2D = ["model.channels=[8,16,32]", "model.strides=[2,2]", "train.patch_size=[64,64]"]
BUDGET = ["train.max_epochs=2", "train.iters_per_epoch=2", "train.warmup_iters=1", "train.val_every=1",
          "train.progress=false", "train.tensorboard=false", "data.workers=1", "evaluate.n_figures=1"]


def _overrides(preset: str, tmp_path: Path, tiny_dataset: Path) -> list[str]:
    if preset == "xray_demo":
        return [f"data.root={tmp_path / 'data'}", "synth.n=8", *SHRINK_2D, *BUDGET]
    if preset in ("demo", "missing_contrast"):
        return [f"data.root={tmp_path / 'data'}", "synth.n=6", "synth.n_test=2", "synth.spacing=4.0",
                *SHRINK_3D, *BUDGET]
    return [f"data.root={tiny_dataset}", *SHRINK_3D, *BUDGET, "train.num_workers=1"]


def test_every_preset_is_covered():
    assert set(PRESETS) == {"demo", "xray_demo", "brats_msd", "missing_contrast", "cpu"}, \
        "add the new preset to _overrides"


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in HEAVY else p
                                    for p in PRESETS])
def test_preset_runs_end_to_end(preset, tmp_path, tiny_dataset):
    proc = run_medseg(["run", f"experiment={preset}", "hydra.run.dir=out",
                       *_overrides(preset, tmp_path, tiny_dataset)], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_dice"] and all(0.0 <= d <= 1.0 for d in summary["test_dice"].values())
    for stage in ("prepare", "train", "evaluate", "export", "predict"):
        assert (out / stage / "summary.json").is_file(), stage
    config = (out / "train" / "config.yaml").read_text()
    assert f"name: {preset}" in config
    if preset == "cpu":  # a cosine over the whole budget to lr / 10 (docs/performance.md, time to quality)
        assert "decay_fraction: 1.0" in config and "budget_schedule: true" in config and "max_time_s: 1800" in config
        assert "min_lr_ratio: 0.1" in config
        budget = json.loads((out / "train" / "summary.json").read_text())["budget"]
        assert budget["final_lr"] == pytest.approx(0.1 * yaml.safe_load(config)["train"]["lr"])
    predictions = json.loads((out / "predict" / "predictions.json").read_text())
    assert predictions["n_ok"] >= 1 and predictions["n_failed"] == 0
