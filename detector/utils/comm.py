"""Distributed helpers: process group set-up from torchrun's environment, rank queries, gathers.

Everything works without a process group (one process): ranks are 0, the world size is 1 and the
collectives return their input. `torchrun --nproc_per_node=N tools/train.py ...` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which `init_distributed` reads.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "reduce_dict",
    "synchronize",
]

logger = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Joins the process group described by torchrun's environment variables.

    Uses NCCL when CUDA is available and gloo otherwise (or `backend`), and selects the GPU of
    LOCAL_RANK. Returns True when this process is part of a group of more than one process; with
    WORLD_SIZE unset or 1 it does nothing and returns False. Calling it twice is harmless.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return False
    if dist.is_initialized():
        return True
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun "
                "(torchrun --nproc_per_node=N tools/train.py ...)"
            )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("process %d of %d joined the %s group", get_rank(), world_size, backend)
    return True


def is_dist() -> bool:
    """True when a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK; 0 without torchrun)."""
    return _env_int("LOCAL_RANK", 0) if get_world_size() > 1 else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes (no-op for one process)."""
    if not is_dist():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_gather(data: Any) -> list[Any]:
    """Gathers one picklable object from every process; returns them in rank order."""
    if not is_dist():
        return [data]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, data)
    return out


def reduce_dict(values: dict[str, Tensor], average: bool = True) -> dict[str, Tensor]:
    """Sums (or averages) each scalar tensor of `values` over all processes, for logging.

    Every process gets the result. The keys must be the same in every process; they are reduced in
    sorted order. The returned tensors are detached.
    """
    if not is_dist() or not values:
        return {k: v.detach() for k, v in values.items()}
    names = sorted(values)
    with torch.no_grad():
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])  # (K,)
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
    return dict(zip(names, stacked.unbind(0), strict=True))
