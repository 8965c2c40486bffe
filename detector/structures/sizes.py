"""Sizes that may be symbolic: while torch.export or torch.compile traces with dynamic shapes,
an image's height and width are `torch.SymInt`s, and `int()` on them would fix the traced
program to the sample image's size.

While torch.jit.trace records a graph (the TorchScript-based ONNX exporter, TorchScript export),
`tensor.shape[i]` is a 0-dim int64 tensor that the tracer follows: it is kept as such, so that
sizes computed from it (counts, clip bounds, top-k sizes) stay in the recorded graph instead of
becoming constants of the sample image."""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["Size", "as_size", "known_equal", "known_greater", "size_min"]

# A size: an int in eager mode, a SymInt while torch.export or torch.compile traces, a 0-dim
# int64 tensor while torch.jit.trace records a graph.
Size: TypeAlias = int | torch.SymInt | torch.Tensor


def _traced(value: Any) -> bool:
    """Whether `value` is a size that torch.jit.trace follows (a 0-dim tensor while tracing)."""
    return isinstance(value, torch.Tensor) and torch.jit.is_tracing()  # pyright: ignore[reportPrivateImportUsage]


def _symbolic(a: Any, b: Any) -> bool:
    return isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt)


def as_size(value: Any) -> Size:
    """`int(value)`, except that a symbolic size stays symbolic and a size followed by
    torch.jit.trace stays a 0-dim tensor."""
    if isinstance(value, torch.SymInt) or _traced(value):
        return value
    return int(value)


def size_min(a: Any, b: Any) -> Any:
    """`min(a, b)` of sizes without fixing a symbolic or traced one."""
    if _traced(a) or _traced(b):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return torch.sym_min(a, b)  # pyright: ignore[reportUnknownVariableType]  (untyped in torch)


def known_greater(a: Any, b: Any) -> bool:
    """`a > b` for sizes; for symbolic sizes, True only when the traced shape formulas prove it
    (no guard is added, so a traced program is not specialized by the test)."""
    if _traced(a) or _traced(b):
        return False  # a recorded graph must not branch on the sample's sizes
    if _symbolic(a, b):
        return statically_known_true(a > b)
    return bool(a > b)


def known_equal(a: Any, b: Any) -> bool:
    """`a == b` for sizes; for symbolic sizes, True only when the traced shape formulas prove it
    (an unknown detection count is not taken to be 0, and no guard is added)."""
    if _traced(a) or _traced(b):
        return False
    if _symbolic(a, b):
        return statically_known_true(a == b)
    return bool(a == b)
