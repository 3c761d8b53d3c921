"""Dice per minute: validation and test Dice as a function of training seconds, for medseg with and
without the budget-aware schedule and for the MONAI tutorial recipe, on the same data, threads and
machine, in one run.

For every budget (``--budgets``, seconds of training wall clock, preparation and caching included
as in ``bench/train_vs_monai.py``) every arm trains once from scratch in its own process:

- ``medseg budget``: ``train.max_time_s=B`` with ``train.budget_schedule=true`` (warm-up, cosine
  decay and validations follow the fraction of the budget used: annealed at B);
- ``medseg wsd``: the budget schedule with ``train.decay_fraction=0.3`` (warmup-stable-decay: the
  peak rate held to 70 % of B, then the cosine decay to 0 at B);
- ``medseg wsd50``: the same with ``train.decay_fraction=0.5`` (held to half of B, decayed over the
  second half);
- ``medseg floor``: the budget cosine ending at a tenth of the peak (``train.min_lr_ratio=0.1``)
  instead of 0;
- ``medseg epochs``: the same with ``train.budget_schedule=false`` (cosine sized for
  ``train.max_epochs``, cut off at B: the schedule before the budget-aware one);
- ``monai``: ``bench/train_vs_monai.py``'s MONAI arm (the tutorial recipe, stopped at B).

The medseg arms share ``--max-epochs`` (a cap, 200 epochs of 40 iterations by default, the
setting of the issue's 600 s run); everything else is ``bench/train_vs_monai.py``'s (same patch,
batch, U-Net, threads, validation every 200 iterations without a budget). Printed: the table
(validation mean Dice at the end of training, test Dice per region and its mean, iterations; then
where the test mean falls short of 1: on the cases that have a region, and by false positives on
those whose reference lacks it, tumour-free and non-enhancing cases, each a whole 0 or 1), the
budget at which each arm's test mean region Dice first reaches each ``--thresholds`` value, the
time into the longest run at which its validation mean Dice first does, and, for every two arms at a
budget, the paired per-case difference of the test mean Dice (bootstrap 95 % CI and Wilcoxon p over
the test cases, the difference per seed, the cases that differ most), and, for the medseg runs, the
test mean Dice of ``best.pt`` (chosen by the moving average of the validation Dice,
``train.best_ema``; the one scored everywhere else) against the final weights' (``last.pt``;
``--checkpoint last`` puts those in every table and the curve instead), and the small-enhancing
rule's table: the threshold each run's fit chose on the validation cases, the test mean Dice with
it (what every other table shows, as ``evaluate`` reports it) and without it (the same weights scored
again where it was on; ``--rule off`` puts those in every table, like with like with the runs
before session 19, which had no rule), the test cases it relabelled; wall s is each run's
preparation plus training (``medseg epochs`` finishes the epoch that crosses the budget). Drawn:
``--png`` (test mean Dice against budget; validation curves of the longest budget; by default
under ``outputs/bench/``, so that a run never replaces a figure in ``docs/``). Every figure states the CPU.
With ``--seeds 0,1,...`` every medseg arm runs once per training seed (same data; the MONAI arm
once): the table then gives per-seed figures and their mean, the curve the mean.

    .venv/bin/python bench/time_to_quality.py [--budgets 60,180,600] [--cases 32] [--test-cases 12]
        [--threads 2] [--seeds 0,1] [--arms "medseg wsd,medseg epochs"] [--png docs/time_to_quality.png]
        [--precision fp32] [--json results.json]
    .venv/bin/python bench/time_to_quality.py --from-json a.json,b.json   # one table of earlier runs

``--from-json`` measures nothing: it merges the ``--json`` files of earlier runs of this script
(e.g. more seeds, added later) into one table and curve; the header states the recorded CPU (the
files' headers; not this machine's) and data (cases, test cases, threads, epoch cap: recorded with
each result since session 10, older files take the command's options; ``--precision``, the medseg
arms' ``train.precision``, when it was given), and files that differ in either are refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_line  # noqa: E402
from train_vs_monai import REGIONS  # noqa: E402

ARMS = {
    "medseg budget": ("medseg", ["train.budget_schedule=true"]),
    "medseg wsd": ("medseg", ["train.budget_schedule=true", "train.decay_fraction=0.3"]),
    "medseg wsd50": ("medseg", ["train.budget_schedule=true", "train.decay_fraction=0.5"]),
    "medseg floor": ("medseg", ["train.budget_schedule=true", "train.min_lr_ratio=0.1"]),
    "medseg epochs": ("medseg", ["train.budget_schedule=false"]),
    "monai": ("monai", []),
}


def run_arm(arm: str, data: Path, work: Path, budget: float, threads: int, max_epochs: int,
            seed: int | None = None, precision: str | None = None) -> dict:
    """One arm at one budget, in its own process (``bench/train_vs_monai.py --arm``); ``seed``: the
    medseg arms' training seed, ``precision`` their ``train.precision`` (``None``: the config's)."""
    kind, overrides = ARMS[arm]
    if kind == "medseg":
        overrides = [*overrides, f"train.max_epochs={max_epochs}", *([f"seed={seed}"] if seed is not None else []),
                     *([f"train.precision={precision}"] if precision else [])]
    args = [sys.executable, str(REPO / "bench" / "train_vs_monai.py"), "--arm", kind, "--data", str(data),
            "--work", str(work), "--budget", str(budget), "--threads", str(threads),
            *(f"--set={o}" for o in overrides)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"{arm} at {budget:.0f} s failed:\n{out.stderr[-3000:]}")
    result = json.loads(line[-1][7:])
    result["test_mean_dice"] = statistics.mean(result["dice"][r] for r in REGIONS)
    if result.get("last"):  # the final weights' test Dice (medseg arms)
        result["last"]["test_mean_dice"] = statistics.mean(result["last"]["dice"][r] for r in REGIONS)
    result["val_final"] = result["val_curve"][-1][1] if result["val_curve"] else None
    if kind == "medseg":
        summary = json.loads((work / "train" / "summary.json").read_text())
        result["iterations"] = summary["iterations"]
        result["stopped_by"] = summary["stopped_by"]
    else:
        result["iterations"] = result["samples"] // 2
        result["stopped_by"] = "budget"
    return result


def group(rows: list[dict]) -> dict[float, list[dict]]:
    """An arm's runs by budget (one per seed), budgets ascending."""
    out: dict[float, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["budget"], -1 if r.get("seed") is None else r["seed"])):
        out.setdefault(r["budget"], []).append(r)
    return out


def mean_of(runs: list[dict], key) -> float | None:
    """Mean over seeds of ``key(run)`` (``None`` when a run has no value)."""
    values = [key(r) for r in runs]
    return None if any(v is None for v in values) else statistics.mean(values)


def first_budget(rows: list[dict], threshold: float) -> float | None:
    """The smallest budget whose test mean Dice (mean over seeds) reaches ``threshold``."""
    return next((b for b, runs in group(rows).items() if mean_of(runs, lambda r: r["test_mean_dice"]) >= threshold),
                None)


def first_time(curve: list, threshold: float) -> float | None:
    """Seconds into a run at which its validation mean Dice first reaches ``threshold``."""
    return next((t for t, d in curve if d >= threshold), None)


def _fmt(value: float | None, spread: list[float] | None = None) -> str:
    if value is None:
        return "-"
    if spread and len(spread) > 1:
        return f"{value:.3f} ({', '.join(f'{v:.3f}' for v in spread)})"
    return f"{value:.3f}"


def table(results: dict[str, list[dict]], thresholds: list[float], header: str) -> str:
    """The printed (Markdown) tables: means over seeds, the per-seed test and validation means in
    brackets when there are several."""
    lines = [header, "", "| arm | budget (s) | seeds | iterations | stopped by | wall s | val mean Dice (end) | "
             + " | ".join(f"test {r}" for r in REGIONS) + " | test mean |", "|---" * (8 + len(REGIONS)) + "|"]
    for arm, rows in results.items():
        for budget, runs in group(rows).items():
            seeds = ", ".join(str(r.get("seed", "-")) for r in runs)
            vals = [r["val_final"] for r in runs] if all(r["val_final"] is not None for r in runs) else None
            lines.append(f"| {arm} | {budget:.0f} | {seeds} | {mean_of(runs, lambda r: r['iterations']):.0f} | "
                         f"{', '.join(sorted({r['stopped_by'] for r in runs}))} | "
                         f"{mean_of(runs, lambda r: r['seconds']):.0f} | "
                         f"{_fmt(mean_of(runs, lambda r: r['val_final']), vals)} | "
                         + " | ".join(f"{mean_of(runs, lambda r, g=g: r['dice'][g]):.3f}" for g in REGIONS)
                         + f" | {_fmt(mean_of(runs, lambda r: r['test_mean_dice']), [r['test_mean_dice'] for r in runs])} |")
    lines += ["", "| arm | " + " | ".join(f"budget to test mean Dice {t:.2f}" for t in thresholds)
              + " | " + " | ".join(f"seconds to val mean Dice {t:.2f} (longest runs)" for t in thresholds) + " |",
              "|---" * (1 + 2 * len(thresholds)) + "|"]
    for arm, rows in results.items():
        longest = list(group(rows).values())[-1]
        budgets = [first_budget(rows, t) for t in thresholds]
        times = [[first_time(r["val_curve"], t) for r in longest] for t in thresholds]
        lines.append(f"| {arm} | " + " | ".join(f"{b:.0f} s" if b is not None else "not reached" for b in budgets)
                     + " | " + " | ".join(", ".join(f"{x:.0f} s" if x is not None else "not reached" for x in ts)
                                          for ts in times) + " |")
    return "\n".join(lines)


def losses(run: dict) -> tuple[float, float, int, int] | None:
    """Where a run's test mean Dice falls short of 1 (``None`` for a run without per-case
    results): (lost on cases whose reference has the region, lost on cases whose reference lacks
    it: a false positive scores 0 there, the number of (case, region) pairs without the region
    predicted empty, their number). The two losses add up to 1 - test mean Dice."""
    if not run.get("cases"):
        return None
    cases = list(run["cases"].values())
    n = len(cases)
    present = absent = 0.0
    right = total = 0
    for region in REGIONS:
        for case in cases:
            dice, ref_ml = case[region]
            if ref_ml > 0:
                present += (1 - dice) / n / len(REGIONS)
            else:
                total += 1
                right += dice == 1
                absent += (1 - dice) / n / len(REGIONS)
    return present, absent, right, total


def breakdown(results: dict[str, list[dict]]) -> str:
    """The Markdown table of :func:`losses` (means over seeds; per seed the absent regions
    predicted empty), or "" when no run has per-case results."""
    lines = ["| arm | budget (s) | 1 - test mean | lost where the region is present | lost to false positives "
             "where it is absent | absent regions predicted empty (per seed) |", "|---" * 6 + "|"]
    for arm, rows in results.items():
        for budget, runs in group(rows).items():
            parts = [losses(r) for r in runs]
            if any(x is None for x in parts):
                continue
            lines.append(f"| {arm} | {budget:.0f} | {1 - mean_of(runs, lambda r: r['test_mean_dice']):.3f} | "
                         f"{statistics.mean(x[0] for x in parts):.3f} | {statistics.mean(x[1] for x in parts):.3f} | "
                         + ", ".join(f"{x[2]}/{x[3]}" for x in parts) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def case_means(runs: list[dict]) -> dict[str, float] | None:
    """Per test case, its mean region Dice averaged over ``runs`` (the seeds of one arm and
    budget), or ``None`` when a run has no per-case results or the runs scored different cases."""
    if not runs or any(not r.get("cases") for r in runs):
        return None
    names = sorted(runs[0]["cases"])
    if any(sorted(r["cases"]) != names for r in runs):
        return None
    return {n: statistics.mean(case_values(r)[n] for r in runs) for n in names}


def case_values(run: dict) -> dict[str, float]:
    """Per test case of one run, its mean region Dice."""
    return {n: statistics.mean(run["cases"][n][g][0] for g in REGIONS) for n in run["cases"]}


def paired(results: dict[str, list[dict]], top: int = 3) -> str:
    """The Markdown table of paired per-case differences, for every two arms at every budget both
    ran with per-case results (or "" when there is none), over the seeds both ran (all of each
    arm's runs when they share none, e.g. the MONAI arm's): B - A of the test mean Dice, its
    bootstrap 95 % CI over the test cases and the two-sided Wilcoxon signed-rank p-value (both
    over the cases' seed-averaged mean region Dice: how much of the gap the test cases' sampling
    explains; ``medseg compare``'s statistics), the bootstrap 95 % CI that resamples the seeds
    too (where both arms ran the same two or more seeds: the seeds' noise and the cases' together,
    the interval to judge a claim by), the difference per seed (seed-to-seed noise), and
    the ``top`` cases that differ most, each with its share of the summed absolute differences
    (how concentrated the disagreement is)."""
    import numpy as np

    from medseg.metrics.aggregate import bootstrap_ci, bootstrap_ci_crossed
    from medseg.stages.compare import wilcoxon_p

    lines = ["| A | B | budget (s) | B - A | 95 % CI (cases) | 95 % CI (seeds and cases) | Wilcoxon p | "
             "B - A per seed | cases that differ most (share of the summed absolute differences) |",
             "|---" * 9 + "|"]
    arms = list(results)
    for i, arm_a in enumerate(arms):
        for arm_b in arms[i + 1:]:
            by_a, by_b = group(results[arm_a]), group(results[arm_b])
            for budget in sorted(set(by_a) & set(by_b)):
                runs_a, runs_b = by_a[budget], by_b[budget]
                common = {r.get("seed") for r in runs_a} & {r.get("seed") for r in runs_b}
                if common:  # like with like: the seeds both arms ran
                    runs_a = [r for r in runs_a if r.get("seed") in common]
                    runs_b = [r for r in runs_b if r.get("seed") in common]
                a, b = case_means(runs_a), case_means(runs_b)
                if a is None or b is None or sorted(a) != sorted(b):
                    continue
                names = sorted(a)
                diff = np.array([b[n] - a[n] for n in names])
                ci = bootstrap_ci(diff)
                both = None
                if len(common) > 1:  # seeds x cases, paired by seed
                    values_a = {r.get("seed"): case_values(r) for r in runs_a}
                    values_b = {r.get("seed"): case_values(r) for r in runs_b}
                    both = bootstrap_ci_crossed(np.array([[values_b[s][n] - values_a[s][n] for n in names]
                                                          for s in sorted(common, key=str)]))
                p = wilcoxon_p(diff)
                seeds_a = {r.get("seed"): r["test_mean_dice"] for r in runs_a}
                per_seed = [f"{r['test_mean_dice'] - seeds_a[r.get('seed')]:+.3f}" for r in runs_b
                            if r.get("seed") in seeds_a]
                spread = np.abs(diff).sum()
                order = np.argsort(-np.abs(diff))[:top]
                held = ", ".join(f"{names[k]} {diff[k]:+.3f}" + (f" ({abs(diff[k]) / spread:.0%})" if spread else "")
                                 for k in order if diff[k] != 0) or "none"
                lines.append(f"| {arm_a} | {arm_b} | {budget:.0f} | {diff.mean():+.3f} | "
                             f"{ci[0]:+.3f} .. {ci[1]:+.3f} | "
                             f"{'-' if both is None else f'{both[0]:+.3f} .. {both[1]:+.3f}'} | "
                             f"{'-' if p is None else f'{p:.2g}'} | "
                             f"{', '.join(per_seed) or '-'} | {held} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def at_last(results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The results with each run's test figures those of its final weights (``last.pt``) instead
    of its ``best.pt``; runs that did not record them (the MONAI arm, files before session 13)
    are left out, arms left with none dropped."""
    out = {arm: [{**r, **r["last"]} for r in rows if r.get("last")] for arm, rows in results.items()}
    return {arm: rows for arm, rows in out.items() if rows}


def rule_off(results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The results with each run's test figures those without the small-enhancing rule (the same
    weights scored again where the rule was on; unchanged where it was off or did not exist yet,
    files before session 19), so that runs of every session compare like with like."""
    def off(r: dict) -> dict:
        without = (r.get("enhancing_rule") or {}).get("without")
        if not without:
            return r
        return {**r, "dice": without["dice"], "cases": without["cases"],
                "test_mean_dice": statistics.mean(without["dice"][g] for g in REGIONS)}
    return {arm: [off(r) for r in rows] for arm, rows in results.items()}


def rule_table(results: dict[str, list[dict]]) -> str:
    """The Markdown table of the small-enhancing rule (threshold fitted on the validation cases) per
    arm and budget, over the runs that recorded it: the threshold per seed, the test mean Dice with
    and without it (the same weights), the difference per seed and the test cases it relabelled
    (with their predicted enhancing volume, ml, and the enhancing-tumour Dice with the rule: 1 when
    the reference has none); "" when no run recorded it."""
    lines = ["| arm | budget (s) | seeds | threshold per seed (ml) | test mean, with the rule | test mean, without | "
             "with - without per seed | test cases relabelled (ml; enhancing Dice with the rule) |", "|---" * 8 + "|"]
    for arm, rows in results.items():
        for budget, runs in group([r for r in rows if r.get("enhancing_rule")]).items():
            without = rule_off({arm: runs})[arm]
            relabelled = []
            for r in runs:
                for case, ml in sorted(r["enhancing_rule"]["cases_relabelled"].items()):
                    dice = r["cases"][case]["enhancing_tumour"][0]
                    relabelled.append(f"{case} {ml:.3f} ({'n/a' if dice is None else f'{dice:.0f}'})")
            seeds = ", ".join(str(r.get("seed")) for r in runs)
            thresholds = ", ".join(f"{r['enhancing_rule']['min_enhancing_ml']:g}" for r in runs)
            gains = ", ".join(f"{a['test_mean_dice'] - b['test_mean_dice']:+.3f}" for a, b in zip(runs, without))
            lines.append(f"| {arm} | {budget:.0f} | {seeds} | {thresholds} | "
                         f"{_fmt(statistics.mean(r['test_mean_dice'] for r in runs))} | "
                         f"{_fmt(statistics.mean(r['test_mean_dice'] for r in without))} | {gains} | "
                         f"{', '.join(relabelled) or 'none'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def ema_pick(curve: list, smoothing: float = 0.9) -> int:
    """The validation (0-based) that ``train.best_ema=smoothing`` chooses for best.pt from a recorded
    curve: the trainer's own rule (:meth:`medseg.engine.state.TrainState.observe`) replayed."""
    from medseg.engine.state import TrainState

    state = TrainState()
    for i, (_, dice) in enumerate(curve):
        state.observe(dice, validated=True, epoch=i, smoothing=smoothing)
    return state.best_epoch


def selection(results: dict[str, list[dict]]) -> str:
    """The Markdown table of what choosing ``best.pt`` by the validation Dice does to the test
    Dice, against keeping the final weights (``last.pt``), per arm and budget over the runs that
    recorded both (or ""): the rule that chose ``best.pt`` (``train.best_ema``: 0, the highest Dice
    itself, in runs that do not record it), the epoch it is from, the validation a 0.9 moving average
    picks from the recorded curve, the test mean Dice of each checkpoint, last - best per seed. Then,
    over the runs whose ``best.pt`` was chosen by the Dice itself and where the moving average picks
    the final validation (whose weights are ``last.pt``'s, so its test Dice is measured), what the
    moving average would have changed."""
    lines = ["| arm | budget (s) | seeds | best.pt chosen by | best.pt epoch / epochs run | a 0.9 moving average "
             "picks validation | test mean, best.pt | test mean, last.pt | last - best per seed |", "|---" * 9 + "|"]
    gains = []
    for arm, rows in results.items():
        for budget, runs in group([r for r in rows if r.get("last") and "best_epoch" in r]).items():
            best = [r["test_mean_dice"] for r in runs]
            last = [r["last"]["test_mean_dice"] for r in runs]
            rules = sorted({_rule(r) for r in runs})
            picks = [(ema_pick(r["val_curve"]) + 1, len(r["val_curve"])) for r in runs]
            gains += [y - x for r, (k, n), x, y in zip(runs, picks, best, last) if k == n and not r.get("best_ema")]
            lines.append(f"| {arm} | {budget:.0f} | {', '.join(str(r.get('seed', '-')) for r in runs)} | "
                         + ", ".join(rules) + " | " + ", ".join(f"{r['best_epoch']} / {r['epochs']}" for r in runs)
                         + " | " + ", ".join(f"{k} of {n}" for k, n in picks)
                         + f" | {_fmt(statistics.mean(best), best)} | {_fmt(statistics.mean(last), last)} | "
                         + ", ".join(f"{y - x:+.3f}" for x, y in zip(best, last)) + " |")
    if len(lines) == 2:
        return ""
    if gains:
        lines += ["", f"Runs chosen by the Dice itself where the moving average picks the final validation: "
                  f"{len(gains)}; choosing by the average (= last.pt there) changes their test mean Dice by "
                  f"{statistics.mean(gains):+.4f} on average ({min(gains):+.3f} .. {max(gains):+.3f})."]
    return "\n".join(lines)


def _rule(run: dict) -> str:
    """How a run chose best.pt: ``Dice`` (the highest validation Dice) or ``EMA <a>``."""
    return f"EMA {run['best_ema']:g}" if run.get("best_ema") else "Dice"


def dice_range(values: list[float], step: float = 0.05, margin: float = 0.02) -> tuple[float, float]:
    """The test-Dice axis: the values' range widened by ``margin`` and rounded out to ``step``,
    within 0..1, so that differences of 0.01 between arms show.

    >>> dice_range([0.873, 0.921]), dice_range([0.03, 0.9]), dice_range([])
    ((0.85, 0.95), (0.0, 0.95), (0.0, 1.0))
    """
    if not values:
        return 0.0, 1.0
    lo = max(0.0, math.floor((min(values) - margin) / step) * step)
    hi = min(1.0, math.ceil((max(values) + margin) / step) * step)
    return round(lo, 6), round(hi, 6)


def draw(results: dict[str, list[dict]], png: Path, title: str) -> None:
    """Test mean Dice against budget (mean over seeds, each seed a dot), and the validation curves
    of the longest budget (one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (arm, rows) in enumerate(results.items()):
        colour = f"C{i}"
        grouped = group(rows)
        ax1.plot(list(grouped), [mean_of(runs, lambda r: r["test_mean_dice"]) for runs in grouped.values()],
                 marker="o", color=colour, label=arm)
        for budget, runs in grouped.items():
            if len(runs) > 1:
                ax1.scatter([budget] * len(runs), [r["test_mean_dice"] for r in runs], color=colour, s=10, alpha=0.5)
        for k, run in enumerate(list(grouped.values())[-1]):
            if run["val_curve"]:
                ax2.plot([t for t, _ in run["val_curve"]], [d for _, d in run["val_curve"]], marker=".",
                         color=colour, alpha=1.0 if k == 0 else 0.5, label=arm if k == 0 else None)
    ax1.set(xlabel="training budget (s)", ylabel="test mean region Dice", title="Dice at the end of each budget")
    ax2.set(xlabel="seconds into the longest run", ylabel="validation mean Dice", title="validation during training")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    ax1.set_ylim(*dice_range([r["test_mean_dice"] for rows in results.values() for r in rows]))
    ax2.set_ylim(0, 1)
    fig.suptitle(textwrap.fill(title, 150), fontsize=9)  # the CPU line is long: wrapped, not cut off
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="60,180,600", help="training seconds, comma-separated")
    p.add_argument("--cases", type=int, default=32, help="built-in cases, the test cases included")
    p.add_argument("--test-cases", type=int, default=12, help="held out for the test Dice")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=200, help="medseg arms' train.max_epochs (a cap)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                   help="the medseg arms' train.precision (default: the config's, auto: bf16 where the CPU has "
                   "AVX512-BF16); fp32 on such a CPU measures what a CPU without it trains")
    p.add_argument("--thresholds", default="0.80,0.90", help="mean region Dice levels to report")
    p.add_argument("--png", type=Path, default=REPO / "outputs" / "bench" / "time_to_quality.png",
                   help="where to draw the curve (default outside docs/, so a run never replaces a documented figure)")
    p.add_argument("--json", type=Path, help="also write every result here")
    p.add_argument("--seeds", "--seed", default="", help="the medseg arms' training seeds, comma-separated "
                   "(default: the config's; the data and the MONAI arm do not change): replicates of the comparison")
    p.add_argument("--from-json", default="", help="comma-separated --json files of earlier runs (one CPU): "
                   "merge them into one table and curve, measuring nothing")
    p.add_argument("--rule", choices=["on", "off"], default="on",
                   help="off: every table and the curve show the test Dice without the small-enhancing rule "
                   "(the runs before session 19 had none; later runs record both)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="whose test Dice the tables and the curve show: best.pt (chosen by the validation Dice, "
                   "the exported one) or last.pt (the final weights; medseg runs since session 13 only)")
    a = p.parse_args()
    thresholds = [float(t) for t in a.thresholds.split(",")]
    if a.from_json:
        results, cpu = merged([Path(x) for x in a.from_json.split(",") if x], setting(a))
        recorded = {json.dumps(r["setting"], sort_keys=True) for rows in results.values() for r in rows}
        if not recorded:
            raise SystemExit(f"time_to_quality: {a.from_json}: no results in the file(s)")
        if len(recorded) > 1:
            raise SystemExit(f"time_to_quality: the files were measured on different data or caps: {sorted(recorded)}")
        vars(a).update(json.loads(recorded.pop()))  # the header states the runs' data
        runs = [r for rows in results.values() for r in rows]
        budgets = sorted({r["budget"] for r in runs})
        seeds = sorted({r["seed"] for r in runs if r.get("seed") is not None}) or [None]
    else:
        budgets = [float(b) for b in a.budgets.split(",") if b]
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()] or [None]
        results, cpu = measure(a, budgets, seeds), cpu_line(a.threads)
    header = (f"{cpu}; {a.cases} built-in cases ({a.cases - a.test_cases} train+val, "
              f"{a.test_cases} test), budgets {', '.join(f'{b:.0f}' for b in budgets)} s; medseg max_epochs "
              f"{a.max_epochs}" + (f", seeds {', '.join(map(str, seeds))}" if seeds != [None] else "")
              + (f"; medseg trained with train.precision={a.precision}" if a.precision else ""))
    measured = results
    if a.checkpoint == "last":
        results = at_last(results)
        if not results:
            raise SystemExit("time_to_quality: --checkpoint last: no run recorded its final weights' test Dice")
        header += "; test Dice of the final weights (last.pt)"
    rules = rule_table(results)
    if a.rule == "off":
        results = rule_off(results)
        header += "; test Dice without the small-enhancing rule"
    print(table(results, thresholds, header))
    lost = breakdown(results)
    if lost:
        print("\nWhere the test mean Dice is lost (BraTS convention: a region absent from the reference scores 1 "
              "if the prediction lacks it too, else 0):\n\n" + lost)
    pairs = paired(results)
    if pairs:
        print("\nPaired per-case differences of the test mean Dice (B - A, each case's mean region Dice "
              "averaged over the seeds; the first CI and p over the test cases, the second CI over the seeds "
              "and the test cases both):\n\n" + pairs)
    if rules:
        print("\nThe small-enhancing rule (a case's enhancing tumour under the threshold relabelled as tumour core; "
              "the threshold fitted on the validation cases, 0: off) against the same weights without it:\n\n"
              + rules)
    chosen = selection(measured)
    if chosen:
        print("\nThe checkpoint: best.pt (chosen by the validation mean Dice, or since session 15 by its moving "
              "average, train.best_ema; the one exported and scored above"
              + (" by default" if a.checkpoint == "last" else "") + ") against the final weights (last.pt):\n\n"
              + chosen)
    draw(results, a.png, header)
    print(f"\nwrote {a.png}")
    if a.json:
        a.json.write_text(json.dumps({"header": header, "results": measured}, indent=1))


def setting(a: argparse.Namespace) -> dict:
    """What a run's numbers depend on besides arm, budget and seed (recorded with each result, so
    that ``--from-json`` states it and refuses to merge runs that differ in it)."""
    fixed = {"cases": a.cases, "test_cases": a.test_cases, "threads": a.threads, "max_epochs": a.max_epochs}
    return {**fixed, "precision": a.precision} if a.precision else fixed  # absent: the config's (older files)


def merged(paths: list[Path], default: dict) -> tuple[dict[str, list[dict]], str]:
    """The results of earlier runs' ``--json`` files, per arm in the order first seen, and the CPU
    they were measured on (their headers' first part; files whose header lacks it are taken as measured
    on the same machine as the others). A result without its recorded setting (files before
    session 10) takes ``default`` (the command's options); a run (arm, budget, seed) measured twice
    is refused, whatever its setting, and so are files recorded on different CPUs."""
    results: dict[str, list[dict]] = {}
    cpus: dict[str, Path] = {}
    for path in paths:
        saved = json.loads(path.read_text())
        cpu = saved.get("header", "").split(";")[0]
        if cpu.startswith("CPU:"):
            cpus.setdefault(cpu, path)
        for arm, rows in saved["results"].items():
            rows = [{**r, "setting": r.get("setting", default)} for r in rows]
            keys = [(r["budget"], r.get("seed")) for r in results.get(arm, []) + rows]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise SystemExit(f"time_to_quality: {path}: {arm} at (budget, seed) {twice} is measured twice "
                                 "(in this file or an earlier one)")
            results.setdefault(arm, []).extend(rows)
    if len(cpus) > 1:
        raise SystemExit("time_to_quality: the files were measured on different CPUs: "
                         + "; ".join(f"{p}: {c}" for c, p in cpus.items()))
    return results, next(iter(cpus), "CPU: not recorded in the files")


def measure(a: argparse.Namespace, budgets: list[float], seeds: list[int | None]) -> dict[str, list[dict]]:
    """Every arm at every budget and seed (see the module docstring)."""
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        raise SystemExit(f"time_to_quality: unknown arm(s) {unknown}; valid: {', '.join(ARMS)}")
    if a.cases - a.test_cases < 4:  # 3 validation cases, at least one to train on
        raise SystemExit(f"time_to_quality: --cases {a.cases} --test-cases {a.test_cases}: needs at least 4 "
                         "cases besides the test cases")
    from medseg.data.synthetic import SynthConfig, write_msd_dataset

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-ttq-"))
    try:
        data = write_msd_dataset(work / "data", SynthConfig(n=a.cases, n_test=a.test_cases, spacing=1.5, seed=1))
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for budget in budgets:
            for seed in seeds:
                for arm in arms:
                    if ARMS[arm][0] != "medseg" and seed != seeds[0]:
                        continue  # the MONAI arm has no seed option: once per budget
                    r = run_arm(arm, data, work / f"{arm.replace(' ', '_')}_{budget:.0f}_{seed}", budget, a.threads,
                                a.max_epochs, seed if ARMS[arm][0] == "medseg" else None, a.precision)
                    r["budget"], r["seed"] = budget, seed
                    r["setting"] = setting(a)
                    results[arm].append(r)
                    print(f"{arm} at {budget:.0f} s, seed {seed}: test mean Dice {r['test_mean_dice']:.3f}, "
                          f"{r['iterations']} iterations ({r['stopped_by']})", file=sys.stderr)
                    if a.json:  # after every run, so a late failure keeps what was measured
                        a.json.write_text(json.dumps({"results": results}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
