"""Hyper-parameter search from config: ``hparams_search=dice_optuna`` runs an Optuna study through
Hydra's sweeper (two tiny trials here), each trial a train run whose validation mean Dice comes back
as the objective; ``optimized_metric`` naming no number is a one-line error."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import TINY, run_medseg
from medseg.cli import objective

#: TINY without its patch size: a command-line value would fix a searched parameter
SMALL = [*(o for o in TINY if not o.startswith("train.patch_size=")), "train.max_epochs=1", "train.iters_per_epoch=2", "train.warmup_iters=1", "train.progress=false",
         "train.tensorboard=false", "train.threads=1"]
#: the patch sizes of the preset are CPU-heavy for a test: the same search over small ones
SEARCH = ["hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
          "hydra.sweeper.params={train.patch_size:'choice([16,16,16],[32,32,32])'}"]  # merged into params


@pytest.mark.slow  # about a minute: two train runs in subprocesses (plus prepare)
def test_optuna_search_runs_two_trials(prepared, tmp_path, judges_python):
    proc = run_medseg(["train", "-m", "hparams_search=dice_optuna", f"paths.prepared={prepared}",
                       "hydra.sweep.dir=sweep", *SMALL, *SEARCH], tmp_path, python=judges_python)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 2
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    # the objective is the moving average at the chosen epoch, a number of its own (not the raw Dice)
    assert all(0.0 < s["best_val_mean_dice_ema"] <= 1.0 for s in summaries)
    assert results["best_value"] == pytest.approx(max(s["best_val_mean_dice_ema"] for s in summaries))
    assert set(results["best_params"]) == {"train.lr", "train.patch_size", "train.dice_weight", "train.ce_weight",
                                           "model.dropout"}
    configs = [yaml.safe_load(p.read_text()) for p in sorted(sweep.glob("*/.hydra/config.yaml"))]
    assert all(0.0003 <= c["train"]["lr"] <= 0.01 and 0.0 <= c["model"]["dropout"] <= 0.3 for c in configs)


def test_objective_is_the_named_summary_value_or_a_clear_error(capsys):
    summary = {"best_val_mean_dice": 0.75, "budget": {"used_s": 12.5}, "fold": None}
    assert objective({"optimized_metric": None}, summary, "train") is summary
    assert objective({"optimized_metric": "best_val_mean_dice"}, summary, "train") == 0.75
    assert objective({"optimized_metric": "budget.used_s"}, summary, "train") == 12.5
    with pytest.raises(SystemExit) as e:
        objective({"optimized_metric": "fold"}, summary, "train")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "optimized_metric=fold" in err and "numeric keys: best_val_mean_dice" in err and err.count("\n") == 1
