"""Benchmark cases for ps_roi_pool and ps_roi_align against torchvision.ops.

R-FCN-like shape: a stride-16 map of an 800x1088 image, 1 x (21 * 7 * 7 = 1029) x 50 x 68, 512
random RoIs, 7x7 bins, sampling_ratio 2 for ps_roi_align. NCHW float32 input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor

import detector.ops
from benchmarks.timing import Case

_CLASSES, _BINS, _HEIGHT, _WIDTH, _NUM_ROIS, _STRIDE = 21, 7, 50, 68, 512, 16
_SHAPE = f"1x{_CLASSES * _BINS * _BINS}x{_HEIGHT}x{_WIDTH}, {_NUM_ROIS} RoIs, {_BINS}x{_BINS}"
_GOAL = 0.2


def _inputs(device: str) -> tuple[Tensor, Tensor]:
    """Features (1, C_out * 49, H, W) and RoIs (K, 5) in image pixels (spatial scale 1/16)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, _CLASSES * _BINS * _BINS, _HEIGHT, _WIDTH, generator=g)
    image = torch.tensor([_WIDTH * _STRIDE, _HEIGHT * _STRIDE], dtype=torch.float32)
    xy = torch.rand(_NUM_ROIS, 2, generator=g) * image
    wh = torch.rand(_NUM_ROIS, 2, generator=g) * image * 0.5 + 1.0
    rois = torch.cat([torch.zeros(_NUM_ROIS, 1), xy, xy + wh], dim=1)
    return features.to(device), rois.to(device)


def _backward_timer(fn: Callable[[Tensor], Tensor], features: Tensor) -> Callable[[], object]:
    """Times only the backward pass of `fn(features)` (the graph is built once)."""
    x = features.clone().requires_grad_()
    out = fn(x)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, x, grad, retain_graph=True)


def cases(device: str) -> list[Case]:
    features, rois = _inputs(device)
    scale = 1.0 / _STRIDE
    pairs = {
        "ps_roi_pool": (
            lambda x: detector.ops.ps_roi_pool(x, rois, _BINS, scale),
            lambda x: torchvision.ops.ps_roi_pool(x, rois, _BINS, scale),
        ),
        "ps_roi_align": (
            lambda x: detector.ops.ps_roi_align(x, rois, _BINS, scale, 2),
            lambda x: torchvision.ops.ps_roi_align(x, rois, _BINS, scale, 2),
        ),
    }
    result = []
    for name, (ours, peer) in pairs.items():
        result.append(
            Case(name, "fwd", _SHAPE, lambda f=ours: f(features), lambda f=peer: f(features), _GOAL)
        )
        result.append(
            Case(
                name,
                "bwd",
                _SHAPE,
                _backward_timer(ours, features),
                _backward_timer(peer, features),
                _GOAL,
            )
        )
    return result
