"""``parallel_map`` after torch has run multi-threaded in the same process (a training run, then a
preparation: Hydra multirun, the benchmarks, a notebook). Forked workers inherit GNU OpenMP's state
without its threads; before the fix their first multi-threaded kernel waited forever. Run in a fresh
interpreter with a timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from medseg.utils.parallel import parallel_map

SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from medseg.utils.parallel import parallel_map

    def shrink(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 1, 96, 96, 96, generator=g)  # large enough for torch to go parallel
        return float(F.interpolate(x, scale_factor=0.5, mode="trilinear").sum()), torch.get_num_threads()

    torch.set_num_threads(2)
    net = torch.nn.Conv3d(4, 8, 3)
    for _ in range(2):  # the parent's OpenMP team now exists
        net(torch.randn(2, 4, 32, 32, 32)).sum().backward()
    here = [shrink(s)[0] for s in range(4)]
    there = parallel_map(shrink, [(s,) for s in range(4)], 2)
    assert [round(v, 2) for v, _ in there] == [round(v, 2) for v in here], (there, here)
    assert {n for _, n in there} == {1}, there
    assert torch.get_num_threads() == 2  # the parent keeps its threads
    print("ok")
""")


def test_workers_forked_after_multithreaded_torch_finish():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_results_come_back_in_job_order():
    assert parallel_map(pow, [(2, k) for k in range(6)], 2) == [2**k for k in range(6)]
    assert parallel_map(pow, [(3, 2)], 2) == [9]  # one job: run here
