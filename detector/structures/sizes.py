"""Sizes that may be symbolic: while torch.export or torch.compile traces with dynamic shapes,
an image's height and width are `torch.SymInt`s, and `int()` on them would fix the traced
program to the sample image's size."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["as_size"]


def as_size(value: Any) -> int | torch.SymInt:
    """`int(value)`, except that a symbolic size stays symbolic."""
    return value if isinstance(value, torch.SymInt) else int(value)
