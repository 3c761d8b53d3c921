"""A prepared GPU check (``bench/gpu_check.sh``, ``make gpu-check``): the CUDA paths in a few minutes.

On one CUDA machine, on built-in synthetic data (written and prepared in a temporary folder):

1. trains a few hundred iterations with ``train.precision=auto`` (bf16 where the GPU has it, else
   fp16 with loss scaling), then a shorter run with ``train.precision=fp16`` (the grad scaler);
   losses and validation Dice must be finite;
2. runs DDP through ``torchrun`` with NCCL on every visible GPU (one process if only one: then the
   NCCL process group and the DDP wrapper are also exercised in-process at world size 1);
3. predicts the test cases with fp32, bf16 and fp16 and checks the labels of each against fp32
   (voxel agreement >= ``--min-agreement``);
4. prints throughput (iterations/s, seconds per case) and peak memory
   (``torch.cuda.max_memory_allocated``) of each step.

Exits 1 on any mismatch or failure. Without a CUDA GPU it says so and exits 0, after a CPU dry run
of the same steps at toy sizes (``--dry-run`` forces that on any machine; ``--no-dry-run`` skips it).

    bash bench/gpu_check.sh                 # the same as: python bench/gpu_check.py
    python bench/gpu_check.py --iters 400 --keep /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from medseg.config import InferenceConfig, Precision  # noqa: E402
from medseg.data.prepared import PreparedDataset  # noqa: E402
from medseg.data.synthetic import SynthConfig, write_msd_dataset  # noqa: E402
from medseg.inference.build import build_predictor  # noqa: E402

log = logging.getLogger("gpu_check")


@dataclass
class Sizes:
    """What one check trains and predicts."""

    device: str
    cases: int
    spacing: float
    target_spacing: float
    patch: int
    channels: str
    iters: int
    fp16_iters: int
    ddp_iters: int
    failures: list[str] = field(default_factory=list)


def sizes(cuda: bool, iters: int) -> Sizes:
    """Full sizes on a GPU, toy sizes for the CPU dry run."""
    if cuda:
        return Sizes("cuda", 10, 1.5, 1.5, 96, "[16,32,64,128,256]", iters, max(50, iters // 3), max(50, iters // 3))
    return Sizes("cpu", 5, 4.0, 4.0, 32, "[8,16,32]", 6, 0, 4)


def medseg(args: list[str], cwd: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run ``medseg`` (under ``torchrun`` with ``torchrun`` processes when > 0)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    head = [sys.executable, "-m", "medseg"] if not torchrun else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--master_port=29533",
        "-m", "medseg"]
    return subprocess.run([*head, *args], cwd=cwd, env=env, capture_output=True, text=True)


def common(s: Sizes) -> list[str]:
    """Overrides shared by every training run of the check."""
    strides = "[2,2,2,2]" if s.channels.count(",") == 4 else "[2,2]"
    p = s.patch
    return [f"model.channels={s.channels}", f"model.strides={strides}", f"train.patch_size=[{p},{p},{p}]",
            f"train.device={s.device}", "train.progress=false", "train.tensorboard=false", "train.val_every=100",
            "train.warmup_iters=20", "train.resume=never"]


def prepare(work: Path, s: Sizes) -> Path:
    """Write the synthetic cases and prepare them."""
    data = write_msd_dataset(work / "Task01_Check", SynthConfig(n=s.cases, n_test=2, spacing=s.spacing, seed=5))
    proc = medseg(["prepare", f"data.root={data}", "hydra.run.dir=prep", "data.workers=2",
                   f"data.target_spacing=[{s.target_spacing},{s.target_spacing},{s.target_spacing}]"], work)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: prepare failed:\n{proc.stderr[-3000:]}")
    return work / "prep"


def train_leg(name: str, work: Path, prep: Path, s: Sizes, precision: str, iters: int, procs: int = 0) -> Path:
    """One training run; prints iterations/s and the peak memory; records failures."""
    epochs = 2
    args = ["train", f"paths.prepared={prep}", f"hydra.run.dir={name}", *common(s), f"train.precision={precision}",
            f"train.max_epochs={epochs}", f"train.iters_per_epoch={max(1, iters // epochs)}"]
    start = time.perf_counter()
    proc = medseg(args, work, torchrun=procs)
    wall = time.perf_counter() - start
    out = work / name
    if proc.returncode != 0:
        s.failures.append(f"{name}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        log.error("%s failed:\n%s", name, proc.stderr[-3000:])
        return out
    summary = json.loads((out / "summary.json").read_text())
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    if not np.all(np.isfinite(losses)) or summary["best_val_mean_dice"] is None:
        s.failures.append(f"{name}: non-finite loss {losses} or no validation Dice")
    if procs and f"{procs} process(es)" not in proc.stderr:
        s.failures.append(f"{name}: expected {procs} process(es) in the log")
    rate = summary["iterations"] / max(summary["train_seconds"], 1e-9)
    peak = summary.get("peak_memory_gb")
    print(f"{name:<14} precision={precision:<5} procs={max(procs, 1)} iterations={summary['iterations']:>4} "
          f"{rate:7.2f} it/s  val mean Dice {summary['best_val_mean_dice']:.3f}  wall {wall:6.1f} s"
          + (f"  peak {peak:.2f} GB" if peak is not None else ""))
    return out


def nccl_single_rank(s: Sizes) -> None:
    """NCCL process group and a DDP step at world size 1 (a one-GPU machine cannot run 2 ranks)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29534")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Conv3d(2, 2, 3).cuda(), device_ids=[0])
        model(torch.randn(1, 2, 8, 8, 8, device="cuda")).sum().backward()
        t = torch.ones(1, device="cuda")
        dist.all_reduce(t)
        ok = t.item() == 1.0 and all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()
    print(f"{'nccl 1 rank':<14} backend=nccl all_reduce + DDP backward: {'ok' if ok else 'FAILED'}")
    if not ok:
        s.failures.append("nccl single-rank DDP step")


def peak_gb(device: str) -> float:
    """Peak memory since the last reset: CUDA allocations, or this process's peak RSS on CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def predict_leg(checkpoint: Path, prep: Path, s: Sizes, min_agreement: float) -> None:
    """Predict the test cases in fp32 and each lower precision; labels must agree with fp32."""
    prepared = PreparedDataset.read(prep)
    refs = prepared.refs(e["name"] for e in prepared.split("test"))
    cases = [(name, case.image, case.affine) for name, case in
             ((name, src.load(ref)) for name, (src, ref) in refs.items())]
    precisions = ["fp32", "bf16", "fp16"] if s.device == "cuda" else ["fp32", "bf16"]
    reference: dict[str, np.ndarray] = {}
    for precision in precisions:
        predictor = build_predictor(InferenceConfig(device=s.device, precision=Precision(precision),
                                                    max_memory_gb=None), checkpoint=checkpoint)
        if s.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds, agreement = [], []
        for name, image, affine in cases:
            pred = predictor(image, affine, name)
            seconds.append(pred.seconds)
            reference.setdefault(name, pred.label)
            agreement.append(float(np.mean(pred.label == reference[name])))
        worst = min(agreement)
        print(f"{'predict':<14} precision={precision:<5} {np.mean(seconds):6.2f} s/case  peak {peak_gb(s.device):.2f} GB"
              f"  label agreement with fp32: worst case {worst:.5f}")
        if worst < min_agreement and s.device == "cuda":  # the dry run's 6-iteration network is not judged
            s.failures.append(f"predict {precision}: labels agree with fp32 on {worst:.5f} of the voxels "
                              f"(< {min_agreement})")


def describe_machine() -> str:
    """GPU names, CUDA and torch versions, or the CPU model."""
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return (f"{torch.cuda.device_count()} GPU(s): {names}; CUDA {torch.version.cuda}, torch {torch.__version__}, "
                f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, NCCL "
                f"{'.'.join(map(str, torch.cuda.nccl.version()))}")
    from machine import cpu_line

    return f"no CUDA GPU; {cpu_line()}; torch {torch.__version__}"


def run_check(work: Path, cuda: bool, iters: int, min_agreement: float) -> list[str]:
    """Every step; returns the failures."""
    s = sizes(cuda, iters)
    prep = prepare(work, s)
    amp = train_leg("amp_auto", work, prep, s, "auto", s.iters)
    if cuda:
        train_leg("amp_fp16", work, prep, s, "fp16", s.fp16_iters)
    gpus = torch.cuda.device_count() if cuda else 1
    train_leg("ddp", work, prep, s, "auto", s.ddp_iters, procs=gpus)
    if cuda and gpus == 1:
        nccl_single_rank(s)
    if (amp / "best.pt").is_file():
        predict_leg(amp / "best.pt", prep, s, min_agreement)
    return s.failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="training iterations of the precision=auto run")
    parser.add_argument("--min-agreement", type=float, default=0.999,
                        help="fraction of voxels whose fp16/bf16 label must equal the fp32 label")
    parser.add_argument("--dry-run", action="store_true", help="the CPU dry run even when a GPU is present")
    parser.add_argument("--no-dry-run", action="store_true", help="without a GPU, only say so")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cuda = torch.cuda.is_available() and not args.dry_run
    print(f"gpu_check: {describe_machine()}")
    if not cuda and args.no_dry_run:
        print("gpu_check: no CUDA GPU: nothing to check (exit 0)")
        return 0
    if not cuda:
        print("gpu_check: no CUDA GPU: CPU dry run of the same steps at toy sizes (fp16 and NCCL need a GPU)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="medseg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        failures = run_check(work, cuda, args.iters, args.min_agreement)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print(f"gpu_check: MISMATCH: {f}")
    verdict = "FAILED" if failures else ("passed" if cuda else "dry run passed (no CUDA GPU: nothing checked on a GPU)")
    print(f"gpu_check: {verdict} in {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
