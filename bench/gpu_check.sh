#!/usr/bin/env bash
# A prepared GPU check (`make gpu-check`): on one CUDA machine, in a few minutes, trains a few
# hundred iterations with train.precision=auto (bf16, or fp16 with loss scaling) and a short fp16
# run, runs DDP with NCCL on every visible GPU through torchrun (one process if only one), predicts
# with fp16/bf16 and checks the labels against fp32, and prints throughput and peak memory
# (torch.cuda.max_memory_allocated). Exits non-zero on any mismatch. Without a CUDA GPU it says
# "no CUDA GPU" and exits 0 after a CPU dry run of the same steps at toy sizes.
#   bash bench/gpu_check.sh [--iters 300] [--min-agreement 0.999] [--keep DIR] [--no-dry-run]
# PYTHON=/path/to/python picks the interpreter (default: the project venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$PYTHON" bench/gpu_check.py "$@"
