"""Timing helpers for the benchmark scripts: median wall time of a callable, and table printing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def median_ms(
    fn: Callable[[], object], device: str = "cpu", warmup: int = 2, repeat: int = 7
) -> float:
    """Median wall time of `fn()` in milliseconds over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(wall_seconds(fn, device) * 1e3 for _ in range(repeat))


def wall_seconds(fn: Callable[[], object], device: str = "cpu") -> float:
    """Wall seconds of one call of `fn()`, synchronising CUDA around it."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@dataclass
class Case:
    """One benchmark row: our callable and the peer's (torchvision's) on the same inputs.

    `goal` is the ratio ours/peer we aim for (printed, never asserted). `dtype` is the dtype of
    our call; `peer_name` says what the peer is when it is not torchvision at that dtype (e.g.
    "ours float32" where torchvision has no kernel for the dtype).
    """

    op: str
    direction: str  # "fwd" or "bwd"
    shape: str
    ours: Callable[[], object]
    peer: Callable[[], object] | None
    goal: float | None = None
    dtype: str = "float32"
    peer_name: str = "torchvision"


def print_table(rows: list[tuple[Case, float, float | None]]) -> None:
    """Prints a Markdown table: op, direction, dtype, shape, ours, peer, ratio, goal."""
    print("| op | dir | dtype | shape | ours (ms) | peer | peer (ms) | ratio | goal |")
    print("|---|---|---|---|---:|---|---:|---:|---:|")
    for case, ours, peer in rows:
        peer_s = f"{peer:.2f}" if peer is not None else "-"
        ratio = f"{ours / peer:.3f}" if peer else "-"
        goal = f"<= {case.goal}" if case.goal is not None else "-"
        cells = (case.op, case.direction, case.dtype, case.shape, f"{ours:.2f}", case.peer_name,
                 peer_s, ratio, goal)  # fmt: skip
        print("| " + " | ".join(cells) + " |")
