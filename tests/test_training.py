"""Training engine: each target/loss/optimiser mode learns a trivially separable case, resume after
``kill -9`` equals the uninterrupted run, extending a finished run, corrupt-state fallback,
determinism, early stopping, cross-validation folds and two-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MEDSEG, REPO, TINY, run_medseg
from medseg.config import (AugmentConfig, Device, LossKind, ModelConfig, Norm, OptimizerKind, Precision, Schedule,
                           TargetMode, TrainConfig)
from medseg.data.dataset import CachedCase
from medseg.data.labels import LabelSpec
from medseg.engine.state import TrainState, latest_state
from medseg.inference.targets import Target
from medseg.engine.trainer import fit
from medseg.models.checkpoint import load_checkpoint

#: only flips: every other augmentation off
_FLIPS_ONLY = AugmentConfig(**{**{f.name: 0.0 for f in fields(AugmentConfig) if f.name.endswith("_prob")},
                               "flip_prob": 0.5})
TRAIN_CFG = TrainConfig(
    max_epochs=6, iters_per_epoch=8, max_time_s=None, batch_size=2, patch_size=[16, 16, 16],
    fg_oversample=0.5, target=TargetMode.labels, loss=LossKind.dice_ce, dice_weight=1.0, ce_weight=1.0,
    focal_gamma=2.0, optimizer=OptimizerKind.adamw, lr=1e-2, momentum=0.99, weight_decay=0.0,
    schedule=Schedule.constant, warmup_iters=0, grad_clip=12.0, precision=Precision.fp32, compile=False,
    seed=0, deterministic=True, resume="never", keep_states=2, patience=None,
    num_workers=0, threads=2, device=Device.cpu, val_every=2, val_overlap=0.25,
    tensorboard=False, mlflow=False, progress=False, augment=_FLIPS_ONLY,
)
MODEL_CFG = ModelConfig(spatial_dims=3, channels=[8, 16], strides=[2], num_res_units=0, norm=Norm.instance,
                        dropout=0.0)


def _separable_case(seed: int) -> CachedCase:
    """Bright nested cubes: label 1 shell, 2 inside it, 3 at the centre; one channel shows each."""
    rng = np.random.default_rng(seed)
    label = np.zeros((24, 24, 24), np.uint8)
    c = rng.integers(9, 15, size=3)
    for code, r in ((1, 7), (2, 4), (3, 2)):
        label[tuple(slice(int(x) - r, int(x) + r) for x in c)] = code
    image = np.stack([(label >= k).astype(np.float32) * 2 - 1 for k in (1, 2, 3)]) + 1.5
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    flat = label.ravel()
    return CachedCase(name=f"c{seed}", image=image, label=label,
                      fg_index={k: np.flatnonzero(flat == k) for k in (1, 2, 3)})


@pytest.mark.parametrize("target,loss,optimizer", [
    ("labels", "dice_ce", "adamw"), ("labels", "dice_focal", "sgd"),
    ("regions", "dice_ce", "adamw"), ("regions", "dice_focal", "adamw"),
])
def test_each_mode_learns_a_separable_case(tmp_path, target, loss, optimizer):
    cfg = replace(TRAIN_CFG, target=TargetMode(target), loss=LossKind(loss), optimizer=OptimizerKind(optimizer),
                  max_epochs=16, lr=1e-2 if optimizer == "adamw" else 5e-2, momentum=0.9)
    tgt = Target(target, LabelSpec())
    cases = [_separable_case(s) for s in range(3)]
    result = fit(cfg, MODEL_CFG, cases[:2], cases[2:], tgt, 3, tmp_path)
    assert result.best_metric > 0.85, result
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta.target["mode"] == target


def test_deep_supervision_learns(tmp_path):
    model_cfg = replace(MODEL_CFG, channels=[8, 16, 32], strides=[2, 2], deep_supervision=True, deep_supr_num=1)
    cases = [_separable_case(s) for s in range(3)]
    result = fit(replace(TRAIN_CFG, max_epochs=16), model_cfg, cases[:2], cases[2:], Target("labels", LabelSpec()), 3,
                 tmp_path)
    assert result.best_metric > 0.85


def test_early_stopping(tmp_path):
    cfg = replace(TRAIN_CFG, lr=0.0, patience=1, max_epochs=20, val_every=1)
    cases = [_separable_case(s) for s in range(2)]
    result = fit(cfg, MODEL_CFG, cases[:1], cases[1:], Target("labels", LabelSpec()), 3, tmp_path)
    assert result.epochs_run == 2 and result.stopped_by.startswith("early stopping")


@pytest.mark.parametrize("smoothing", [0.9, 0.0])
def test_best_pt_is_the_epoch_whose_moving_average_of_the_validation_dice_peaks(tmp_path, smoothing):
    """best.pt is the epoch of the highest ema = a * ema + (1 - a) * Dice over the validations
    (a = train.best_ema; 0: the highest Dice itself), recomputed here from metrics.jsonl."""
    cfg = replace(TRAIN_CFG, max_epochs=8, val_every=1, best_ema=smoothing)
    cases = [_separable_case(s) for s in range(3)]
    result = fit(cfg, MODEL_CFG, cases[:2], cases[2:], Target("labels", LabelSpec()), 3, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dice = [x["val_mean_dice"] for x in lines]
    ema, averages = None, []
    for d in dice:
        ema = d if ema is None else smoothing * ema + (1 - smoothing) * d
        averages.append(ema)
    assert [x["val_mean_dice_ema"] for x in lines] == pytest.approx(averages)
    chosen = max(range(len(averages)), key=lambda i: (averages[i], -i))  # the first of equal peaks
    assert result.best_epoch == chosen and result.best_metric == pytest.approx(dice[chosen])
    assert result.best_metric_ema == pytest.approx(averages[chosen])  # the summary's best_val_mean_dice_ema
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta.epoch == chosen and meta.best_metric == pytest.approx(dice[chosen])
    if smoothing == 0.0:
        assert result.best_metric == max(dice)


def test_the_moving_average_ignores_a_lucky_validation_and_reads_older_states():
    lucky = [0.5, 0.9, 0.6, 0.8, 0.85, 0.85]
    raw, smooth = TrainState(), TrainState()
    for epoch, score in enumerate(lucky):
        raw.observe(score, validated=True, epoch=epoch)
        smooth.observe(score, validated=True, epoch=epoch, smoothing=0.5)
    assert (raw.best, raw.best_epoch, raw.stale) == (0.9, 1, 4)
    assert (smooth.best, smooth.best_epoch, smooth.stale) == (0.85, 5, 0)
    assert smooth.best_ema == pytest.approx(0.81875) and TrainState.from_dict(smooth.to_dict()) == smooth
    # a state written before the average existed chose by the score: the average starts at its best
    old = TrainState.from_dict({"epoch": 4, "iteration": 40, "best": 0.8, "best_epoch": 2, "stale": 1})
    assert old.best_ema == old.ema == 0.8
    assert not old.observe(0.7, validated=True, epoch=4, smoothing=0.9) and old.stale == 2  # average 0.79
    assert old.observe(0.95, validated=True, epoch=5, smoothing=0.9)  # average 0.806
    assert (old.best, old.best_epoch, old.stale) == (0.95, 5, 0)
    fresh = TrainState.from_dict({"epoch": 0, "iteration": 0, "best": -float("inf"), "best_epoch": -1, "stale": 0})
    assert fresh.ema is None and fresh.observe(0.1, validated=True, smoothing=0.9)


def test_best_ema_outside_its_range_is_refused():
    with pytest.raises(ValueError, match=r"train.best_ema=1.0 must be in \[0, 1\)"):
        replace(TRAIN_CFG, best_ema=1.0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0]


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- through the command line on a prepared tiny dataset -----------------------------------------

RESUME = [*TINY, "train.deterministic=true", "train.iters_per_epoch=30", "train.max_epochs=3", "train.val_every=1",
          "train.threads=2"]


def _train(prepared: Path, cwd: Path, run_dir: str, *extra: str) -> subprocess.CompletedProcess:
    return run_medseg(["train", f"paths.prepared={prepared}", f"hydra.run.dir={run_dir}", *RESUME, *extra], cwd)


def test_resume_after_kill_equals_uninterrupted_and_runs_are_deterministic(prepared, tmp_path):
    for name in ("a", "b"):
        proc = _train(prepared, tmp_path, name)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert _same(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")  # determinism

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*MEDSEG, "train", f"paths.prepared={prepared}", "hydra.run.dir=k", *RESUME]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_state = tmp_path / "k" / "states" / "state-00000.json"
    deadline = time.monotonic() + 120
    while not first_state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k" / "summary.json").exists(), "the run finished before it was killed"
    resumed = _train(prepared, tmp_path, "k")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["iterations"] == 90
    assert _same(tmp_path / "a" / "last.pt", tmp_path / "k" / "last.pt")
    lines = [json.loads(x) for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    # the moving average that chooses best.pt is recorded as in the uninterrupted run (its state
    # round trip: test_the_moving_average_ignores_a_lucky_validation_and_reads_older_states)
    uninterrupted = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [x["val_mean_dice_ema"] for x in lines] == [x["val_mean_dice_ema"] for x in uninterrupted]


def test_extend_finished_run_and_fall_back_from_a_corrupt_state(prepared, tmp_path):
    proc = _train(prepared, tmp_path, "r", "train.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    states = tmp_path / "r" / "states"
    newest = sorted(states.glob("state-*.pt"))[-1]
    assert newest.name == "state-00001.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated by a full disk, say
    proc = _train(prepared, tmp_path, "r", "train.max_epochs=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "state-00001.pt is unusable" in proc.stderr and "resumed from" in proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("state-00000.pt")
    assert summary["epochs"] == 4 and summary["iterations"] == 120
    state, path = latest_state(states)
    assert path.name == "state-00003.pt" and state["progress"]["epoch"] == 4
    # finished: rerunning changes nothing
    proc = _train(prepared, tmp_path, "r", "train.max_epochs=4")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["iterations"] == 120
    # another model cannot resume this state: a clear error, not a traceback
    proc = _train(prepared, tmp_path, "r", "train.max_epochs=5", "model.channels=[4,8,16]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "was written for another model or optimiser configuration" in proc.stderr


def test_train_stage_validates_after_the_evaluate_post_processing(prepared, tmp_path):
    """``evaluate.inference.min_component_ml`` reaches validation through the train stage: with a
    threshold no tumour reaches, every prediction is emptied, so each validation case scores 1 on
    a region its reference lacks and 0 on one it has, whatever the (untrained, lr 0) network says."""
    from medseg.data.prepared import PreparedDataset

    proc = _train(prepared, tmp_path, "v", "train.max_epochs=1", "train.iters_per_epoch=2", "train.lr=0",
                  "evaluate.inference.min_component_ml=1e9")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dataset = PreparedDataset.read(prepared)
    refs = [np.load(e["label"]) for e in dataset.datalist["validation"]]
    assert refs
    expected = {region: float(np.mean([not np.isin(ref, codes).any() for ref in refs]))
                for region, codes in dataset.labels.regions.items()}
    record = json.loads((tmp_path / "v" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_dice"] == pytest.approx(expected)


def test_cross_validation_folds_partition_the_training_cases(prepared, tmp_path):
    seen = []
    for fold in (0, 1):
        proc = _train(prepared, tmp_path, f"f{fold}", f"train.fold={fold}", "train.folds=2", "train.max_epochs=1")
        assert proc.returncode == 0, proc.stderr[-2000:]
        _, meta = load_checkpoint(tmp_path / f"f{fold}" / "best.pt")
        assert meta.fold == fold
        seen.append(set(meta.validation_cases))
    datalist = json.loads((prepared / "datalist.json").read_text())
    pool = {e["name"] for e in datalist["train"] + datalist["validation"]}
    assert seen[0] | seen[1] == pool and not seen[0] & seen[1]
    proc = _train(prepared, tmp_path, "bad", "train.fold=5", "train.folds=5")
    assert proc.returncode == 2 and "train.fold=5 must be in 0..4" in proc.stderr


def test_two_process_ddp_on_cpu(prepared, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
            "-m", "medseg", "train", f"paths.prepared={prepared}", "hydra.run.dir=ddp", *TINY,
            "train.threads=1", "train.max_epochs=2"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["iterations"] == 6
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    assert load_checkpoint(tmp_path / "ddp" / "best.pt")[1].epoch is not None


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    cfg = replace(TRAIN_CFG, precision=Precision.bf16, max_epochs=16)
    cases = [_separable_case(s) for s in range(3)]
    result = fit(cfg, MODEL_CFG, cases[:2], cases[2:], Target("labels", LabelSpec()), 3, tmp_path)
    assert result.best_metric > 0.8
    with pytest.raises(Exception, match="fp16 needs a GPU"):
        fit(replace(cfg, precision=Precision.fp16), MODEL_CFG, cases[:2], [], Target("labels", LabelSpec()), 3,
            tmp_path)


def test_mlflow_tracking_or_a_clear_error(tmp_path):
    cfg = replace(TRAIN_CFG, mlflow=True, max_epochs=2, mlflow_uri=None)
    cases = [_separable_case(s) for s in range(2)]
    try:
        import mlflow  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match=r"train.mlflow=true needs MLflow: pip install 'medseg\[mlflow\]'"):
            fit(cfg, MODEL_CFG, cases[:1], cases[1:], Target("labels", LabelSpec()), 3, tmp_path)
        return
    fit(cfg, MODEL_CFG, cases[:1], cases[1:], Target("labels", LabelSpec()), 3, tmp_path)
    assert any((tmp_path / "mlruns").rglob("val_mean_dice"))


@pytest.mark.slow
def test_torch_compile_trains(tmp_path):
    cfg = replace(TRAIN_CFG, compile=True, max_epochs=4)
    cases = [_separable_case(s) for s in range(3)]
    result = fit(cfg, MODEL_CFG, cases[:2], cases[2:], Target("labels", LabelSpec()), 3, tmp_path)
    assert result.iterations == 32


class _BrightVoxelsAreEdema(torch.nn.Module):
    """A fixed 'network': label 1 (edema) wherever channel 0 is bright, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x[:, :1] > 0.5).float() * 20.0 - 10.0
        return torch.cat([-fg, fg, torch.full_like(fg, -10.0), torch.full_like(fg, -10.0)], dim=1)


def test_validation_scores_after_the_exported_post_processing():
    """A 2x2x2 speck of false positives on a tumour-free validation case costs its three region
    Dice values 1 -> 0 without post-processing; with the export's small-component removal (at the
    plan's spacing: 8 voxels of 8 mm^3 = 0.064 ml < 0.5 ml) the speck goes, and the tumour-bearing
    case, whose 12^3 tumour (13.8 ml) is kept, scores the same both ways."""
    from medseg.engine.validation import validate

    empty_image = np.zeros((1, 24, 24, 24), np.float32)
    empty_image[0, 4:6, 4:6, 4:6] = 1.0
    tumour_label = np.zeros((24, 24, 24), np.uint8)
    tumour_label[6:18, 6:18, 6:18] = 1
    cases = [CachedCase("empty", empty_image, np.zeros((24, 24, 24), np.uint8), {}),
             CachedCase("tumour", tumour_label[None].astype(np.float32), tumour_label,
                        {1: np.flatnonzero(tumour_label.ravel() == 1)})]
    args = (_BrightVoxelsAreEdema(), cases, Target("labels", LabelSpec()), [16, 16, 16], 0.25, torch.device("cpu"))
    raw = validate(*args)
    cleaned = validate(*args, spacing=[2.0, 2.0, 2.0], min_component_ml=0.5)
    # whole tumour: (0 + 1) / 2 raw, (1 + 1) / 2 cleaned; core and enhancing: both cases empty and predicted empty
    assert raw["whole_tumour"] == pytest.approx(0.5) and cleaned["whole_tumour"] == pytest.approx(1.0)
    assert raw["tumour_core"] == cleaned["tumour_core"] == pytest.approx(1.0)
    # a threshold above the tumour's volume removes it too: validation follows the setting exactly
    assert validate(*args, spacing=[2.0, 2.0, 2.0], min_component_ml=20.0)["whole_tumour"] == pytest.approx(0.5)
