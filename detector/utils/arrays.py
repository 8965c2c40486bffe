"""Typed NumPy <-> torch conversions (torch's stubs leave `torch.from_numpy`'s parameter
unannotated, so a strict type checker sees every call as partially unknown)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["from_numpy", "tolist"]


def from_numpy(array: np.ndarray[Any, Any]) -> Tensor:
    """`torch.from_numpy(array)`: a tensor that shares the array's memory."""
    return torch.from_numpy(array)  # pyright: ignore[reportUnknownMemberType]


def tolist(tensor: Tensor) -> list[Any]:
    """`tensor.tolist()` of a tensor with at least one dimension (nested lists of Python
    numbers; torch's stubs type the items as unknown)."""
    return tensor.tolist()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
