"""The machine a benchmark ran on, stated in every printed figure: the CPU model (``lscpu``), whether
it has AVX512-BF16 (native bf16: medseg's ``precision=auto`` uses bf16 there, fp32 elsewhere), the
cores torch may use, and the GPU when there is one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """``lscpu``'s model name (``/proc/cpuinfo`` without lscpu)."""
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def has_avx512_bf16() -> bool:
    """The CPU flags include ``avx512_bf16``."""
    info = Path("/proc/cpuinfo")
    return info.is_file() and "avx512_bf16" in info.read_text()


def cpu_line(threads: int | None = None) -> str:
    """``CPU: <model>, AVX512-BF16 yes|no, <n> cores[, <t> threads]``."""
    line = f"CPU: {cpu_model()}, AVX512-BF16 {'yes' if has_avx512_bf16() else 'no'}, {os.cpu_count()} cores"
    return line + (f", {threads} threads" if threads else "")


def gpu_line() -> str | None:
    """``GPU: <name> x<n>`` or ``None`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return f"GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"


if __name__ == "__main__":
    print(cpu_line())
