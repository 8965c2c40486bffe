"""Flush-to-zero and denormals-are-zero on every CPU thread, for training.

Training from scratch fills the gradients with denormal floats (a confident classifier's
softmax and sigmoid gradients underflow below 1.2e-38); on x86 each arithmetic instruction that
touches one is ~100x slower, and measured on the WBC crops (benchmarks/accuracy.py, ResNet-18 FPN
from scratch) whole iterations took 15 s instead of 1.7 s. With the flags set, such values are
read and written as 0. `torch.set_flush_denormal` sets them on the calling thread only; the
compiled op sets them on every OpenMP thread too (ops/cpu/denormals.cpp).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import torch

# _library registers torch.ops.detector.*
from detector.ops import _library  # noqa: F401  # pyright: ignore[reportUnusedImport]

__all__ = ["flush_denormals", "flush_denormals_enabled"]


def flush_denormals_enabled() -> bool:
    """Whether the calling thread flushes denormals (False on CPUs without the flags)."""
    enabled: bool = torch.ops.detector._flush_denormal_enabled()  # schema: () -> bool
    return enabled


@contextmanager
def flush_denormals(enabled: bool = True) -> Generator[None, None, None]:
    """Within the block, CPU float arithmetic on the caller and on every intra-op thread treats
    denormal inputs and results as 0 (`enabled=False`: leaves the flags as they are). The previous
    state is restored on exit."""
    if not enabled:
        yield
        return
    previous = flush_denormals_enabled()
    torch.ops.detector._set_flush_denormal(True)
    try:
        yield
    finally:
        torch.ops.detector._set_flush_denormal(previous)
