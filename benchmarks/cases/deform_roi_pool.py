"""Benchmark cases of deform_roi_pool and deform_ps_roi_pool.

Peers (torchvision has no deformable RoI pooling): the nearest non-deformable ops on the same
inputs, roi_align(aligned=True) for the plain form and ps_roi_align for the PS form.

- plain: features 1x256x200x272 (stride 4 of an 800x1088 image), 512 random RoIs, 7x7, sampling 2,
  random small offsets (and a mask for the modulated rows).
- PS (R-FCN, 21 classes): score maps 1x(21*49)x50x68 (stride 16), 512 RoIs, 7x7, sampling 2.
Backward rows time the backward pass alone (the graph is kept between runs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor

from benchmarks.timing import Case
from detector.ops import deform_ps_roi_pool, deform_roi_pool

IMAGE_H, IMAGE_W = 800, 1088
NUM_ROIS = 512


def _rois(num: int, device: str, seed: int = 0) -> Tensor:
    """Tensor[num, 5] random boxes inside an IMAGE_H x IMAGE_W image, up to half its size."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([IMAGE_W, IMAGE_H], dtype=torch.float32)
    xy = torch.rand(num, 2, generator=g) * size * 0.75
    wh = (torch.rand(num, 2, generator=g) * 0.45 + 0.02) * size
    boxes = torch.cat([torch.zeros(num, 1), xy, torch.minimum(xy + wh, size)], dim=1)
    return boxes.to(device)


def _backward(forward: Callable[[], Tensor], leaves: list[Tensor]) -> Callable[[], object]:
    """Runs `forward` once and returns a callable timing only its backward pass."""
    out = forward()
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)


def _plain_cases(device: str) -> list[Case]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 200, 272, generator=g).to(device).requires_grad_()
    rois = _rois(NUM_ROIS, device)
    offset = (0.1 * torch.randn(NUM_ROIS, 2, 7, 7, generator=g)).to(device).requires_grad_()
    mask = torch.rand(NUM_ROIS, 1, 7, 7, generator=g).to(device).requires_grad_()
    shape = "1x256x200x272, 512 RoIs, 7x7, s2"

    def ours(m: Tensor | None = None) -> Tensor:
        return deform_roi_pool(features, rois, offset, 7, 0.25, 2, 0.1, m)

    def peer() -> Tensor:
        return torchvision.ops.roi_align(features, rois, 7, 0.25, 2, aligned=True)

    return [
        Case("deform_roi_pool", "fwd", shape, ours, peer),
        Case(
            "deform_roi_pool",
            "bwd",
            shape,
            _backward(ours, [features, offset]),
            _backward(peer, [features]),
        ),
        Case("deform_roi_pool+mask", "fwd", shape, lambda: ours(mask), peer),
        Case(
            "deform_roi_pool+mask",
            "bwd",
            shape,
            _backward(lambda: ours(mask), [features, offset, mask]),
            _backward(peer, [features]),
        ),
    ]


def _ps_cases(device: str) -> list[Case]:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(1, 21 * 49, 50, 68, generator=g).to(device).requires_grad_()
    rois = _rois(NUM_ROIS, device, seed=1)
    offset = (0.1 * torch.randn(NUM_ROIS, 2, 7, 7, generator=g)).to(device).requires_grad_()
    shape = "1x1029x50x68, 512 RoIs, 7x7, s2"

    def ours() -> Tensor:
        return deform_ps_roi_pool(scores, rois, offset, 7, 1 / 16, 2, 0.1)

    def peer() -> Tensor:
        return torchvision.ops.ps_roi_align(scores, rois, 7, 1 / 16, 2)

    return [
        Case("deform_ps_roi_pool", "fwd", shape, ours, peer),
        Case(
            "deform_ps_roi_pool",
            "bwd",
            shape,
            _backward(ours, [scores, offset]),
            _backward(peer, [scores]),
        ),
    ]


def cases(device: str) -> list[Case]:
    """The rows printed by benchmarks/ops.py for this op family."""
    return _plain_cases(device) + _ps_cases(device)
