"""Dice per minute: validation and test Dice as a function of training seconds, for medseg with and
without the budget-aware schedule and for the MONAI tutorial recipe, on the same data, threads and
machine, in one run.

For every budget (``--budgets``, seconds of training wall clock, preparation and caching included
as in ``bench/train_vs_monai.py``) every arm trains once from scratch in its own process:

- ``medseg budget``: ``train.max_time_s=B`` with ``train.budget_schedule=true`` (warm-up, cosine
  decay and validations follow the fraction of the budget used: annealed at B);
- ``medseg epochs``: the same with ``train.budget_schedule=false`` (cosine sized for
  ``train.max_epochs``, cut off at B: the schedule before the budget-aware one);
- ``monai``: ``bench/train_vs_monai.py``'s MONAI arm (the tutorial recipe, stopped at B).

The medseg arms share ``--max-epochs`` (a cap, 200 epochs of 40 iterations by default, the
setting of the issue's 600 s run); everything else is ``bench/train_vs_monai.py``'s (same patch,
batch, U-Net, threads, validation every 200 iterations without a budget). Printed: the table
(validation mean Dice at the end of training, test Dice per region and its mean, iterations), the
budget at which each arm's test mean region Dice first reaches each ``--thresholds`` value, and the
time into the longest run at which its validation mean Dice first does; wall s is each run's
preparation plus training (``medseg epochs`` finishes the epoch that crosses the budget). Drawn: ``--png`` (test mean
Dice against budget; validation curves of the longest budget). Every figure states the CPU.

    .venv/bin/python bench/time_to_quality.py [--budgets 60,180,600] [--cases 24] [--threads 2]
        [--png docs/time_to_quality.png] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_line  # noqa: E402
from train_vs_monai import REGIONS  # noqa: E402

ARMS = {
    "medseg budget": ("medseg", ["train.budget_schedule=true"]),
    "medseg epochs": ("medseg", ["train.budget_schedule=false"]),
    "monai": ("monai", []),
}


def run_arm(arm: str, data: Path, work: Path, budget: float, threads: int, max_epochs: int,
            seed: int | None = None) -> dict:
    """One arm at one budget, in its own process (``bench/train_vs_monai.py --arm``); ``seed``: the
    medseg arms' training seed (``None``: the config's)."""
    kind, overrides = ARMS[arm]
    if kind == "medseg":
        overrides = [*overrides, f"train.max_epochs={max_epochs}", *([f"seed={seed}"] if seed is not None else [])]
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
    result["val_final"] = result["val_curve"][-1][1] if result["val_curve"] else None
    if kind == "medseg":
        summary = json.loads((work / "train" / "summary.json").read_text())
        result["iterations"] = summary["iterations"]
        result["stopped_by"] = summary["stopped_by"]
    else:
        result["iterations"] = result["samples"] // 2
        result["stopped_by"] = "budget"
    return result


def first_budget(rows: list[dict], threshold: float) -> float | None:
    """The smallest budget whose test mean Dice reaches ``threshold``."""
    return next((r["budget"] for r in sorted(rows, key=lambda r: r["budget"]) if r["test_mean_dice"] >= threshold),
                None)


def first_time(curve: list, threshold: float) -> float | None:
    """Seconds into a run at which its validation mean Dice first reaches ``threshold``."""
    return next((t for t, d in curve if d >= threshold), None)


def table(results: dict[str, list[dict]], thresholds: list[float], header: str) -> str:
    """The printed (Markdown) tables."""
    lines = [header, "", "| arm | budget (s) | iterations | stopped by | wall s | val mean Dice (end) | "
             + " | ".join(f"test {r}" for r in REGIONS) + " | test mean |", "|---" * (7 + len(REGIONS)) + "|"]
    for arm, rows in results.items():
        for r in sorted(rows, key=lambda r: r["budget"]):
            val = f"{r['val_final']:.3f}" if r["val_final"] is not None else "-"
            lines.append(f"| {arm} | {r['budget']:.0f} | {r['iterations']} | {r['stopped_by']} | {r['seconds']:.0f} | "
                         f"{val} | "
                         + " | ".join(f"{r['dice'][g]:.3f}" for g in REGIONS) + f" | {r['test_mean_dice']:.3f} |")
    lines += ["", "| arm | " + " | ".join(f"budget to test mean Dice {t:.2f}" for t in thresholds)
              + " | " + " | ".join(f"seconds to val mean Dice {t:.2f} (longest run)" for t in thresholds) + " |",
              "|---" * (1 + 2 * len(thresholds)) + "|"]
    for arm, rows in results.items():
        longest = max(rows, key=lambda r: r["budget"])
        budgets = [first_budget(rows, t) for t in thresholds]
        times = [first_time(longest["val_curve"], t) for t in thresholds]
        lines.append(f"| {arm} | " + " | ".join(f"{b:.0f} s" if b is not None else "not reached" for b in budgets)
                     + " | " + " | ".join(f"{t:.0f} s" if t is not None else "not reached" for t in times) + " |")
    return "\n".join(lines)


def draw(results: dict[str, list[dict]], png: Path, title: str) -> None:
    """Test mean Dice against budget, and the validation curves of the longest budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, rows in results.items():
        rows = sorted(rows, key=lambda r: r["budget"])
        ax1.plot([r["budget"] for r in rows], [r["test_mean_dice"] for r in rows], marker="o", label=arm)
        curve = max(rows, key=lambda r: r["budget"])["val_curve"]
        if curve:
            ax2.plot([t for t, _ in curve], [d for _, d in curve], marker=".", label=arm)
    ax1.set(xlabel="training budget (s)", ylabel="test mean region Dice", title="Dice at the end of each budget")
    ax2.set(xlabel="seconds into the longest run", ylabel="validation mean Dice", title="validation during training")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="60,180,600", help="training seconds, comma-separated")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=200, help="medseg arms' train.max_epochs (a cap)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    p.add_argument("--thresholds", default="0.80,0.90", help="mean region Dice levels to report")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "time_to_quality.png")
    p.add_argument("--json", type=Path, help="also write every result here")
    p.add_argument("--seed", type=int, help="the medseg arms' training seed (default: the config's; the data "
                   "and the MONAI arm do not change): a replicate of the same comparison")
    a = p.parse_args()
    budgets = [float(b) for b in a.budgets.split(",") if b]
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        raise SystemExit(f"time_to_quality: unknown arm(s) {unknown}; valid: {', '.join(ARMS)}")
    thresholds = [float(t) for t in a.thresholds.split(",")]
    if "monai" in arms and a.cases < 8:  # 4 test cases, 3 validation cases, at least one to train on
        raise SystemExit(f"time_to_quality: --cases {a.cases}: the MONAI arm needs at least 8")
    from medseg.data.synthetic import SynthConfig, write_msd_dataset

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-ttq-"))
    try:
        data = write_msd_dataset(work / "data", SynthConfig(n=a.cases, n_test=4, spacing=1.5, seed=1))
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for budget in budgets:
            for arm in arms:
                r = run_arm(arm, data, work / f"{arm.replace(' ', '_')}_{budget:.0f}", budget, a.threads, a.max_epochs,
                            a.seed)
                r["budget"] = budget
                results[arm].append(r)
                print(f"{arm} at {budget:.0f} s: test mean Dice {r['test_mean_dice']:.3f}, {r['iterations']} "
                      f"iterations ({r['stopped_by']})", file=sys.stderr)
                if a.json:  # after every run, so a late failure keeps what was measured
                    a.json.write_text(json.dumps({"results": results}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = (f"{cpu_line(a.threads)}; {a.cases} built-in cases ({a.cases - 4} train+val, 4 test), "
              f"budgets {', '.join(f'{b:.0f}' for b in budgets)} s; medseg max_epochs {a.max_epochs}"
              + (f", seed {a.seed}" if a.seed is not None else ""))
    print(table(results, thresholds, header))
    draw(results, a.png, header)
    print(f"\nwrote {a.png}")
    if a.json:
        a.json.write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
