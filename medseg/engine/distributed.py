"""DistributedDataParallel helpers for :func:`medseg.engine.trainer.fit`.

A run is distributed when ``torchrun`` started it (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on GPUs.
With one process every helper is a no-op, and ``torch.distributed`` is never imported.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler


def distributed_env() -> tuple[int, int]:
    """``(rank, world_size)`` from the variables torchrun sets; ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device, world: int) -> torch.device:
    """Join the process group (when ``world`` > 1); returns this process's device (its own GPU)."""
    if world == 1:
        return device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return device


def distributed_sampler(dataset: Dataset, rank: int, world: int) -> Sampler | None:
    """A sampler giving each process its share of ``dataset`` (``None`` for one process)."""
    if world == 1:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)


def wrap_ddp(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (``model`` itself for one process)."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_mean(value: float, world: int, device: torch.device) -> float:
    """Mean of ``value`` over all processes."""
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every process."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    """Wait for every process."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
