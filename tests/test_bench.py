"""The arithmetic of the benchmark scripts whose figures go into docs/performance.md: where the
time-to-quality test Dice is lost, the per-case results it is computed from, and the merging of
earlier runs' files (duplicates and differing data refused). Nothing here trains or times anything."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import time_to_quality as ttq  # noqa: E402
from train_vs_monai import REGIONS, test_cases as read_test_cases  # noqa: E402

SETTING = {"cases": 44, "test_cases": 24, "threads": 2, "max_epochs": 200}


def _case(whole, core, enhancing):
    """Per region [Dice, reference ml] of one case."""
    return dict(zip(REGIONS, (whole, core, enhancing)))


def _run(budget, seed, cases=None, setting=SETTING, mean=0.8):
    run = {"budget": budget, "seed": seed, "test_mean_dice": mean, "dice": {r: mean for r in REGIONS},
           "val_curve": [[budget / 2, mean - 0.1], [budget, mean]], "val_final": mean, "iterations": 100,
           "stopped_by": "budget", "seconds": budget}
    if cases is not None:
        run["cases"] = cases
    if setting is not None:
        run["setting"] = setting
    return run


def test_the_loss_split_adds_up_to_what_the_test_mean_misses():
    # case a: all regions present; case b: tumour-free, predicted empty (1) except a false enhancing
    # region (0); case c: a non-enhancing tumour whose absent enhancing region is predicted empty
    cases = {"a": _case([0.9, 10.0], [0.6, 4.0], [0.3, 1.0]),
             "b": _case([1.0, 0.0], [1.0, 0.0], [0.0, 0.0]),
             "c": _case([0.8, 5.0], [0.5, 2.0], [1.0, 0.0])}
    mean = sum(d for case in cases.values() for d, _ in case.values()) / 9
    present, absent, right, total = ttq.losses({"cases": cases})
    assert present == pytest.approx((0.1 + 0.4 + 0.7 + 0.2 + 0.5) / 9)
    assert absent == pytest.approx(1.0 / 9)
    assert (right, total) == (3, 4)
    assert present + absent == pytest.approx(1 - mean)
    assert ttq.losses({"cases": {}}) is None and ttq.losses({}) is None


def test_per_case_results_keep_the_failed_cases_the_mean_scores(tmp_path):
    """A case whose prediction failed is scored as an empty prediction and counted in the summary's
    mean: it stays in the per-case results, so the loss split sums to 1 - mean."""
    regions = {r: {"dice": 0.5, "volume_ref_ml": 2.0} for r in REGIONS}
    failed = {r: {"dice": 0.0, "volume_ref_ml": 3.0} for r in REGIONS}
    (tmp_path / "metrics.json").write_text(json.dumps({"cases": [
        {"case": "ok_case", "status": "ok", **regions}, {"case": "lost", "status": "failed", **failed}]}))
    cases = read_test_cases(tmp_path / "metrics.json")
    assert cases == {"ok_case": {r: [0.5, 2.0] for r in REGIONS}, "lost": {r: [0.0, 3.0] for r in REGIONS}}
    present, absent, _, _ = ttq.losses({"cases": cases})
    assert present + absent == pytest.approx(1 - 0.25)


def test_merged_files_take_the_command_setting_where_none_is_recorded_and_refuse_a_run_twice(tmp_path):
    old = tmp_path / "old.json"  # before session 10: no setting recorded
    old.write_text(json.dumps({"results": {"medseg wsd": [_run(400, 0, setting=None)]}}))
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0)], "medseg epochs": [_run(400, 0)]}}))
    results, cpu = ttq.merged([old, new], SETTING)
    assert [(r["budget"], r["setting"]) for r in results["medseg wsd"]] == [(400, SETTING), (600, SETTING)]
    assert cpu == "CPU: not recorded in the files"
    again = tmp_path / "again.json"  # the same (arm, budget, seed), this time with a setting
    again.write_text(json.dumps({"results": {"medseg wsd": [_run(400, 0)]}}))
    with pytest.raises(SystemExit, match=r"again.json: medseg wsd at \(budget, seed\) \[\(400, 0\)\] is measured twice"):
        ttq.merged([old, again], SETTING)
    again.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 1), _run(600, 1, setting=None)]}}))
    with pytest.raises(SystemExit, match=r"\[\(600, 1\)\] is measured twice"):  # within one file too
        ttq.merged([again], SETTING)


def _from_json(tmp_path, *files, extra=()):
    return subprocess.run([sys.executable, str(BENCH / "time_to_quality.py"), "--from-json", ",".join(map(str, files)),
                           "--png", str(tmp_path / "curve.png"), *extra], capture_output=True, text=True)


def test_from_json_states_the_recorded_data_and_refuses_files_that_differ(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"results": {"medseg wsd": [_run(400, 0, mean=0.85)]}}))
    b.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0, mean=0.88)]}}))
    proc = _from_json(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "44 built-in cases (20 train+val, 24 test), budgets 400, 600 s; medseg max_epochs 200" in proc.stdout
    assert "| medseg wsd | 400 s | not reached |" in proc.stdout  # 0.80 reached at 400 s, 0.90 never
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    b.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0, setting={**SETTING, "test_cases": 12})]}}))
    proc = _from_json(tmp_path, a, b)
    assert proc.returncode != 0 and "measured on different data or caps" in proc.stderr
    # a file without a recorded setting is taken as measured with the command's options
    b.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0, setting=None)]}}))
    assert "measured on different data" in _from_json(tmp_path, a, b).stderr
    proc = _from_json(tmp_path, a, b, extra=["--cases", "44", "--test-cases", "24"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    b.write_text(json.dumps({"results": {}}))
    proc = _from_json(tmp_path, b)
    assert proc.returncode != 0 and "no results in the file(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_from_json_states_the_cpu_the_files_recorded_not_this_machines(tmp_path):
    """The header of a merged table names the CPU in the files' headers (a file without one goes with
    them); files recorded on two CPUs are refused."""
    intel = "CPU: Intel(R) Xeon(R) Processor @ 2.80GHz, AVX512-BF16 no, 2 cores, 2 threads"
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"header": intel + "; 44 built-in cases", "results": {"medseg wsd": [_run(400, 0)]}}))
    b.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0)]}}))
    proc = _from_json(tmp_path, a, b)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(intel + "; 44 built-in cases (20 train+val, 24 test), budgets 400, 600 s")
    c.write_text(json.dumps({"header": "CPU: AMD EPYC, AVX512-BF16 yes, 2 cores, 2 threads; 44 built-in cases",
                             "results": {"medseg wsd": [_run(1200, 0)]}}))
    proc = _from_json(tmp_path, a, c)
    assert proc.returncode != 0 and "measured on different CPUs" in proc.stderr and "Traceback" not in proc.stderr
    assert "a.json: " + intel in proc.stderr and "c.json: CPU: AMD EPYC" in proc.stderr


def _per_case(values):
    """Per case the same Dice in every region (reference volumes > 0), so its mean region Dice is the value."""
    return {name: _case([v, 5.0], [v, 2.0], [v, 1.0]) for name, v in values.items()}


def test_paired_differences_are_per_case_means_over_seeds_with_a_hand_checked_p_value():
    a_cases = _per_case({"c1": 0.25, "c2": 0.25, "c3": 0.25, "c4": 0.25})
    b_seed0 = _per_case({"c1": 0.75, "c2": 0.5, "c3": 0.375, "c4": 0.3125})
    results = {"medseg wsd": [_run(600, 0, a_cases, mean=0.25), _run(600, 1, a_cases, mean=0.25)],
               "medseg epochs": [_run(600, 0, b_seed0, mean=0.484375), _run(600, 1, b_seed0, mean=0.5),
                                 _run(400, 0, b_seed0)],  # 400 s: no run of A to pair with
               "monai": [_run(600, None, mean=0.3)]}  # no per-case results: not paired
    rows = ttq.paired(results).splitlines()[2:]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == ["medseg wsd", "medseg epochs", "600", "+0.234"]  # (0.5 + 0.25 + 0.125 + 0.0625) / 4
    low, high = (float(x) for x in cells[4].split(" .. "))
    assert 0.0625 <= low < 0.234375 < high <= 0.5
    # over seeds and cases: B's seeds differ only in the test mean recorded, not per case, so the
    # interval is again one over the cases (its own draws)
    low, high = (float(x) for x in cells[5].split(" .. "))
    assert 0.0625 <= low < 0.234375 < high <= 0.5
    assert cells[6] == "0.12"  # exact Wilcoxon, 4 positive differences: 2 / 2**4
    assert cells[7] == "+0.234, +0.250"  # per seed: each run's test mean against the same seed of A
    # the largest difference first, with its share of the summed absolute differences (0.5 / 0.9375)
    assert cells[8] == "c1 +0.500 (53%), c2 +0.250 (27%), c3 +0.125 (13%)"
    # only the seeds both arms ran are paired: seed 1 of A (all 0.75) is left out against B's seed 0
    one_seed = {"a": [_run(600, 0, a_cases, mean=0.25), _run(600, 1, _per_case(dict.fromkeys(a_cases, 0.75)))],
                "b": [_run(600, 0, b_seed0, mean=0.484375)]}
    cells = [c.strip() for c in ttq.paired(one_seed).splitlines()[2].strip("|").split("|")]
    assert cells[3] == "+0.234" and cells[7] == "+0.234"
    assert cells[5] == "-"  # one seed: nothing to say about the seeds' noise
    same = {"x": [_run(600, 0, a_cases)], "y": [_run(600, 0, a_cases)]}
    cells = [c.strip() for c in ttq.paired(same).splitlines()[2].strip("|").split("|")]
    assert cells[3] == "+0.000" and cells[6] == "-" and cells[8] == "none"
    assert ttq.paired({"x": [_run(600, 0)], "y": [_run(600, 0)]}) == ""  # nothing per case


def test_the_seeds_and_cases_interval_widens_where_the_seeds_disagree():
    """Two seeds whose differences cancel on every case: the seed-averaged per-case differences are
    all 0, so the interval over the cases alone is 0 .. 0, while the one that resamples the seeds
    spans what either seed alone says (-0.2 .. +0.2: a draw of seed 0 twice gives +0.2)."""
    names = [f"c{i}" for i in range(12)]
    a = _per_case(dict.fromkeys(names, 0.5))
    results = {"a": [_run(600, 0, a, mean=0.5), _run(600, 1, a, mean=0.5)],
               "b": [_run(600, 0, _per_case(dict.fromkeys(names, 0.7)), mean=0.7),
                     _run(600, 1, _per_case(dict.fromkeys(names, 0.3)), mean=0.3)]}
    cells = [c.strip() for c in ttq.paired(results).splitlines()[2].strip("|").split("|")]
    assert cells[3] == "+0.000" and cells[4] == "+0.000 .. +0.000"
    assert cells[5] == "-0.200 .. +0.200"
    assert cells[7] == "+0.200, -0.200"


def test_arms_that_share_no_seed_are_paired_over_all_their_runs():
    """The MONAI arm has no seed (``None``): its runs are paired with every seed of a medseg arm,
    and there is no difference per seed to give."""
    a_cases = _per_case({"c1": 0.25, "c2": 0.25})
    b_cases = _per_case({"c1": 0.75, "c2": 0.5})
    results = {"monai": [_run(600, None, a_cases, mean=0.25)],
               "medseg wsd": [_run(600, 0, b_cases), _run(600, 1, b_cases)]}
    cells = [c.strip() for c in ttq.paired(results).splitlines()[2].strip("|").split("|")]
    assert cells[:4] == ["monai", "medseg wsd", "600", "+0.375"] and cells[5] == "-" and cells[7] == "-"


def test_the_moving_average_pick_skips_a_lucky_validation():
    curve = [[t, d] for t, d in enumerate([0.5, 0.9, 0.6, 0.8, 0.85, 0.85])]
    assert ttq.ema_pick(curve) == 5  # averages 0.5, 0.54, 0.546, 0.571, 0.599, 0.624
    assert ttq.ema_pick(curve, smoothing=0.0) == 1  # the highest Dice itself
    assert ttq.ema_pick(curve, smoothing=0.5) == 5 and ttq.ema_pick([[0, 0.7], [1, 0.7]]) == 0  # the first of equals


def test_the_final_weights_replace_best_pt_only_where_recorded(tmp_path):
    """``--checkpoint last`` scores every run by its final weights: the per-region, per-case and
    mean test Dice all come from ``last``; runs without it (the MONAI arm, older files) drop out."""
    last_cases = _per_case({"c1": 0.5, "c2": 0.75})
    run = {**_run(600, 0, _per_case({"c1": 0.25, "c2": 0.25}), mean=0.25), "best_epoch": 3, "epochs": 15,
           "last": {"dice": {r: 0.625 for r in REGIONS}, "cases": last_cases, "test_mean_dice": 0.625}}
    results = {"medseg wsd": [run, _run(600, 1)], "monai": [_run(600, None)]}
    swapped = ttq.at_last(results)
    assert list(swapped) == ["medseg wsd"] and len(swapped["medseg wsd"]) == 1
    chosen = swapped["medseg wsd"][0]
    assert chosen["test_mean_dice"] == 0.625 and chosen["cases"] is last_cases and chosen["dice"]["whole_tumour"] == 0.625
    assert results["medseg wsd"][0]["test_mean_dice"] == 0.25  # the measured results are left as they are
    assert ttq.case_means(swapped["medseg wsd"]) == {"c1": 0.5, "c2": 0.75}
    # the selection table: every run that recorded both, here two seeds of one arm (MONAI recorded none)
    two = {"medseg wsd": [run, {**run, "seed": 1, "best_epoch": 15, "last": {**run["last"], "test_mean_dice": 0.125}}],
           "monai": [_run(600, None)]}
    table = ttq.selection(two).splitlines()
    rows = [line for line in table if line.startswith("| medseg")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells == ["medseg wsd", "600", "0, 1", "Dice", "3 / 15, 15 / 15", "2 of 2, 2 of 2", "0.250 (0.250, 0.250)",
                     "0.375 (0.625, 0.125)", "+0.375, -0.125"]
    # both chosen by the Dice itself, the average picking the final validation: last.pt's Dice is its choice's
    assert table[-1].startswith("Runs chosen by the Dice itself where the moving average picks the final "
                                "validation: 2;") and "by +0.1250 on average (-0.125 .. +0.375)" in table[-1]
    # seed 1 of medseg wsd recorded no final weights: the table covers seed 0 alone
    assert [c.strip() for c in ttq.selection(results).splitlines()[2].strip("|").split("|")][2:5] == ["0", "Dice", "3 / 15"]
    # a run whose best.pt the moving average chose already is not counted as a change
    smoothed = {"medseg budget": [{**run, "best_ema": 0.9}]}
    table = ttq.selection(smoothed).splitlines()
    assert "| EMA 0.9 |" in table[2] and not table[-1].startswith("Runs chosen")
    assert ttq.selection({"monai": [_run(600, None)]}) == ""
    old = tmp_path / "old.json"  # a file from before the final weights were recorded
    old.write_text(json.dumps({"results": {"medseg wsd": [_run(600, 0)]}}))
    proc = _from_json(tmp_path, old, extra=["--checkpoint", "last"])
    assert proc.returncode != 0 and "no run recorded its final weights" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_medseg_arm_scores_best_pt_and_the_final_weights_apart(tmp_path):
    """bench/train_vs_monai.py's medseg arm on a tiny set: the headline Dice is best.pt's, ``last``
    the final weights' (evaluated from last.pt into its own folder), both on every test case."""
    from medseg.data.synthetic import SynthConfig, write_msd_dataset
    from medseg.models.checkpoint import load_checkpoint
    from medseg.utils.files import sha256_file
    from train_vs_monai import run_medseg

    data = write_msd_dataset(tmp_path / "data", SynthConfig(n=8, n_test=2, spacing=2.0, fov_mm=(96.0, 96.0, 96.0), seed=3))
    work = tmp_path / "work"
    result = run_medseg(data, work, budget=25, threads=2,  # a threshold above any enhancing volume: the rule on
                        extra=["train.budget_schedule=true", "train.seed=0", "evaluate.inference.min_enhancing_ml=50"])
    test_names = sorted(p.name.split(".")[0] for p in (data / "labelsTs").glob("*.nii.gz"))
    assert sorted(result["cases"]) == sorted(result["last"]["cases"]) == test_names
    assert set(result["dice"]) == set(result["last"]["dice"]) == set(REGIONS)
    assert 0 <= result["best_epoch"] < result["epochs"]
    _, best = load_checkpoint(work / "train" / "best.pt")
    _, last = load_checkpoint(work / "train" / "last.pt")
    for folder, checkpoint in (("evaluate", "best.pt"), ("evaluate_last", "last.pt")):  # each scored apart
        metrics = json.loads((work / folder / "metrics.json").read_text())
        assert Path(metrics["checkpoint"]) == work / "train" / checkpoint
        assert metrics["model_sha256"] == sha256_file(work / "train" / checkpoint)
    # best.pt is the best validation's epoch, last.pt the final one
    assert (best.epoch, last.epoch) == (result["best_epoch"], result["epochs"] - 1)
    # the rule was on, so each checkpoint was scored again without it, from the same weights
    for rule, folder in ((result["enhancing_rule"], "evaluate"), (result["last"]["enhancing_rule"], "evaluate_last")):
        assert rule["min_enhancing_ml"] == 50 and sorted(rule["without"]["cases"]) == test_names
        without = json.loads((work / f"{folder}_norule" / "metrics.json").read_text())
        assert without["postprocessing"]["min_enhancing_ml"] == 0 and without["model_sha256"] == json.loads(
            (work / folder / "metrics.json").read_text())["model_sha256"]
        assert set(rule["cases_relabelled"]) <= set(test_names)


def test_the_rule_table_pairs_each_run_with_its_own_weights_without_the_rule():
    """Seed 0's rule relabelled one absent enhancing tumour (Dice 0 -> 1 on that region: +1/3 on
    the case, +1/6 on the mean of two cases); seed 1's fitted threshold was 0, so it was not scored
    again. ``rule_off`` puts the figures without the rule in place, and leaves older runs alone."""
    with_rule = _per_case({"c1": 1.0, "c2": 0.5})
    without = _per_case({"c1": 1.0, "c2": 0.5})
    without["c1"]["enhancing_tumour"] = [0.0, 0.0]
    seed0 = _run(300, 0, with_rule, mean=0.75)
    seed0["enhancing_rule"] = {"min_enhancing_ml": 0.2, "cases_relabelled": {"c1": 0.12},
                               "without": {"dice": {"whole_tumour": 0.75, "tumour_core": 0.75, "enhancing_tumour": 0.25},
                                           "cases": without}}
    seed1 = _run(300, 1, with_rule, mean=0.75)
    seed1["enhancing_rule"] = {"min_enhancing_ml": 0.0, "cases_relabelled": {}}
    results = {"medseg floor": [seed0, seed1], "monai": [_run(300, None, mean=0.3)]}
    rows = ttq.rule_table(results).splitlines()
    assert len(rows) == 3  # the MONAI run recorded no rule: no row
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells == ["medseg floor", "300", "0, 1", "0.2, 0", "0.750", "0.667", "+0.167, +0.000", "c1 0.120 (1)"]
    off = ttq.rule_off(results)
    assert off["medseg floor"][0]["test_mean_dice"] == pytest.approx(1.75 / 3)
    assert off["medseg floor"][0]["cases"]["c1"]["enhancing_tumour"] == [0.0, 0.0]
    assert off["medseg floor"][1] is seed1 and off["monai"][0] is results["monai"][0]
    assert ttq.rule_table({"monai": [_run(300, None)]}) == ""


def test_the_test_dice_axis_zooms_to_the_data_so_small_differences_show():
    assert ttq.dice_range([0.873, 0.921]) == (0.85, 0.95)  # 0.01 is a tenth of the axis, not 1 %
    assert ttq.dice_range([0.03, 0.9]) == (0.0, 0.95)  # clipped at 0
    assert ttq.dice_range([0.99, 0.995]) == (0.95, 1.0)  # and at 1
    assert ttq.dice_range([]) == (0.0, 1.0)


def test_a_forced_precision_is_recorded_stated_and_never_merged_with_the_configs(tmp_path):
    """``--precision fp32`` (what a CPU without AVX512-BF16 trains, measured on one with it) goes into
    every result's setting and the header; runs with the config's precision are not merged with them."""
    forced, plain = tmp_path / "fp32.json", tmp_path / "plain.json"
    forced.write_text(json.dumps({"results": {"medseg floor": [_run(600, 0, setting={**SETTING, "precision": "fp32"})]}}))
    plain.write_text(json.dumps({"results": {"medseg floor": [_run(600, 1)]}}))
    proc = _from_json(tmp_path, forced)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "medseg max_epochs 200, seeds 0; medseg trained with train.precision=fp32" in proc.stdout
    assert "train.precision" not in _from_json(tmp_path, plain).stdout
    proc = _from_json(tmp_path, forced, plain)
    assert proc.returncode != 0 and "measured on different data or caps" in proc.stderr
    args = argparse.Namespace(cases=44, test_cases=24, threads=2, max_epochs=200, precision=None)
    assert ttq.setting(args) == SETTING  # files from before the option match runs without it
    assert ttq.setting(argparse.Namespace(**{**vars(args), "precision": "fp32"})) == {**SETTING, "precision": "fp32"}
