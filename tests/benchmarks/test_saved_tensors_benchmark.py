"""benchmarks/saved_tensors.py counts each storage a graph keeps once, ATen nodes and custom
autograd functions alike."""

from __future__ import annotations

import torch

from benchmarks.saved_tensors import saved_bytes


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_counts_every_saved_storage_once() -> None:
    a = torch.randn(100, 10, requires_grad=True)  # 4000 bytes
    b = torch.randn(10, 20, requires_grad=True)  # 800 bytes
    product = a @ b  # saves a and b
    squared = _Square.apply(product)  # saves product: 100 x 20 floats, 8000 bytes
    total, per_type = saved_bytes((squared * a.sum()).sum())  # a again, and a.sum()'s result
    assert per_type["MmBackward0"] == 4000 + 800
    assert per_type["_SquareBackward"] == 8000
    assert total == 4000 + 800 + 8000 + per_type["MulBackward0"]
    assert per_type["MulBackward0"] == 8000 + 4  # `squared` and the 0-dim sum, not `a` again
