"""Process-parallel map for CPU-bound per-case work (data generation, verification, preprocessing)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def parallel_map(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in order, over up to ``workers`` processes.

    Uses the ``fork`` start method where available (no re-import of torch in the workers); runs in
    this process when ``workers <= 1`` or there is a single job.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(fn, *zip(*jobs)))
