"""Benchmark cases of deform_conv2d: the baseline shape of docs/benchmarks.md, DCN v1 and v2, vs
torchvision.

input 1x64x100x100 float32 NCHW, 3x3 kernel, padding 1, 64 output channels, 1 offset group.
Goals (ours / torchvision): forward <= 0.3, backward <= 0.2.
"""

from __future__ import annotations

import torch
import torchvision

from benchmarks.timing import Case
from detector.ops import deform_conv2d


def _inputs(device: str, use_mask: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    args = {
        "input": torch.randn(1, 64, 100, 100, generator=g),
        "offset": torch.randn(1, 18, 100, 100, generator=g) * 2,
        "weight": torch.randn(64, 64, 3, 3, generator=g) * 0.05,
        "bias": torch.randn(64, generator=g),
        "mask": torch.rand(1, 9, 100, 100, generator=g) if use_mask else None,
    }
    return {k: v.to(device).requires_grad_() if v is not None else None for k, v in args.items()}


def _forward(fn, args: dict):
    def run() -> torch.Tensor:
        with torch.no_grad():
            return fn(
                args["input"],
                args["offset"],
                args["weight"],
                args["bias"],
                padding=1,
                mask=args["mask"],
            )

    return run


def _backward(fn, args: dict):
    out = fn(
        args["input"], args["offset"], args["weight"], args["bias"], padding=1, mask=args["mask"]
    )
    grad = torch.randn_like(out)
    tensors = [v for v in args.values() if v is not None]

    def run() -> tuple:
        # backward only: the graph is kept, so each call reruns just the backward pass
        return torch.autograd.grad(out, tensors, grad, retain_graph=True)

    return run


def cases(device: str) -> list[Case]:
    rows = []
    for use_mask in (False, True):
        args = _inputs(device, use_mask)
        shape = f"1x64x100x100 k3 p1 O64 {'v2 (mask)' if use_mask else 'v1'}"
        rows.append(
            Case(
                "deform_conv2d",
                "fwd",
                shape,
                _forward(deform_conv2d, args),
                _forward(torchvision.ops.deform_conv2d, args),
                goal=0.3,
            )
        )
        rows.append(
            Case(
                "deform_conv2d",
                "bwd",
                shape,
                _backward(deform_conv2d, args),
                _backward(torchvision.ops.deform_conv2d, args),
                goal=0.2,
            )
        )
    return rows
