"""Distributed helpers: process group set-up from torchrun's environment, rank queries, gathers.

Everything works without a process group (one process): ranks are 0, the world size is 1 and the
collectives return their input. `torchrun --nproc_per_node=N tools/train.py ...` sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which `init_distributed` reads.

Clean exits with gloo. A gloo collective is run by one of the process group's C++ worker threads,
which keeps a reference to the work (and so to its tensors) a little after `wait()` returns. A
tensor made in Python is freed through its Python object, which needs the GIL; if the interpreter
is already finalizing when that thread asks for it, the thread is torn down inside a destructor and
the process dies with "terminate called without an active exception" (SIGABRT), after a run that
succeeded. DistributedDataParallel keeps the gloo group alive past `destroy_process_group`, so its
threads live until the very end. Every collective here therefore waits, after `wait()`, until the
worker thread has let go of the tensors it was given (their Python reference counts are back to
what they were before the call), and `shutdown()` ends a run in order: a barrier, then the group
destroyed while Python is fully alive.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
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
    "max_over_ranks",
    "reduce_dict",
    "shutdown",
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


def _refcounts(tensors: Sequence[Tensor]) -> list[int]:
    return [sys.getrefcount(t) for t in tensors]


def _wait_released(tensors: Sequence[Tensor], before: list[int], timeout_s: float = 60.0) -> None:
    """Waits (sleeping, so without the GIL) until no C++ work holds `tensors` any more: each
    reference count is back to `before`. See the module docstring for why."""
    deadline = time.monotonic() + timeout_s
    while any(now > was for now, was in zip(_refcounts(tensors), before, strict=True)):
        if time.monotonic() > deadline:
            logger.warning("a collective's tensors were held %.0f s after it ended", timeout_s)
            return
        time.sleep(0.0001)


def _collective(op: Callable[..., Any], tensors: Sequence[Tensor], *args: Any) -> None:
    """`op(*args, async_op=True)`, waited for; with gloo, also until its worker thread has released
    `tensors` (every tensor the call was given)."""
    before = _refcounts(tensors)
    work = op(*args, async_op=True)
    work.wait()
    del work
    if dist.get_backend() == "gloo":
        _wait_released(tensors, before)


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(data: Any) -> list[Any]:
    """Gathers one picklable object from every process; returns them in rank order."""
    if not is_dist():
        return [data]
    device, world = _device(), get_world_size()
    payload = torch.frombuffer(bytearray(pickle.dumps(data)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    _collective(dist.all_gather, [*sizes, size], sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)  # (max length,)
    padded[: payload.numel()] = payload
    gathered = [torch.empty_like(padded) for _ in range(world)]
    _collective(dist.all_gather, [*gathered, padded], gathered, padded)
    return [
        pickle.loads(g[:n].cpu().numpy().tobytes())  # noqa: S301 (our own processes' data)
        for g, n in zip(gathered, lengths, strict=True)
    ]


def max_over_ranks(value: int) -> int:
    """The largest `value` of all processes (one all_reduce of one int64; `value` itself
    without a process group)."""
    if not is_dist():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    _collective(dist.all_reduce, [tensor], tensor, dist.ReduceOp.MAX)
    return int(tensor.item())


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
        _collective(dist.all_reduce, [stacked], stacked)
        if average:
            stacked /= get_world_size()
    return dict(zip(names, stacked.unbind(0), strict=True))


def shutdown(*, failed: bool = False) -> None:
    """Ends this process's part of a distributed run (no-op without a process group).

    After a success every rank meets at a barrier (so no rank tears its connections down while
    another still talks), then the group is destroyed. After a failure (`failed`) the barrier is
    skipped, since the other ranks may never reach it: torchrun stops them.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if not failed:
        synchronize()
    dist.destroy_process_group()
