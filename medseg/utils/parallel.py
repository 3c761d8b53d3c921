"""Process-parallel map for CPU-bound per-case work (data generation, verification, preprocessing)."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _one_thread_per_worker() -> None:
    """Worker initializer: torch, where the parent had loaded it, runs single-threaded in each worker.

    A forked child inherits the parent's OpenMP state but not its OpenMP threads, so the first
    multi-threaded torch kernel in the child waits forever for threads that do not exist (GNU
    OpenMP is not fork-safe) whenever the parent had already run one, e.g. a training run followed
    by a preparation in the same process (Hydra multirun, the benchmarks, a notebook). With one
    thread torch never starts an OpenMP team; the pool already has one worker per core, so nothing
    is lost (torch's DataLoader workers do the same). A parent without torch (the synthetic data
    writers import none) has no OpenMP state to pass on, and is not made to import it.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def parallel_map(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in order, over up to ``workers`` processes.

    Uses the ``fork`` start method where available (no re-import of torch in the workers), each
    worker with one torch thread; runs in this process when ``workers <= 1`` or there is a single
    job.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                             initializer=_one_thread_per_worker) as pool:
        return list(pool.map(fn, *zip(*jobs)))
