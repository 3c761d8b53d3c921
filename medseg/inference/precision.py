"""Mixed precision: which autocast dtype a device gets for ``precision=auto|fp32|bf16|fp16``."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from medseg.errors import ConfigError


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), read from ``/proc/cpuinfo``."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` / ``inference.precision`` on ``device`` (``None``: fp32).

    ``auto``: bf16 on GPUs that support it (else fp16 with loss scaling), bf16 on CPUs with native
    bf16 instructions (1.3-1.6x faster training steps than fp32 on an AVX512-BF16 EPYC, measured by
    ``bench/train_step.py``), fp32 on other CPUs, where emulated bf16 is slower.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("precision=fp16 needs a GPU; use bf16 or fp32 on CPU")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``; a no-op for fp32 (``dtype=None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
