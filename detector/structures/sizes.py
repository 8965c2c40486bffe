"""Sizes that may be symbolic: while torch.export or torch.compile traces with dynamic shapes,
an image's height and width are `torch.SymInt`s, and `int()` on them would fix the traced
program to the sample image's size."""

from __future__ import annotations

from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["as_size", "known_equal", "known_greater"]


def as_size(value: Any) -> int | torch.SymInt:
    """`int(value)`, except that a symbolic size stays symbolic."""
    return value if isinstance(value, torch.SymInt) else int(value)


def known_greater(a: Any, b: Any) -> bool:
    """`a > b` for sizes; for symbolic sizes, True only when the traced shape formulas prove it
    (no guard is added, so a traced program is not specialized by the test)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return statically_known_true(a > b)
    return bool(a > b)


def known_equal(a: Any, b: Any) -> bool:
    """`a == b` for sizes; for symbolic sizes, True only when the traced shape formulas prove it
    (an unknown detection count is not taken to be 0, and no guard is added)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return statically_known_true(a == b)
    return bool(a == b)
