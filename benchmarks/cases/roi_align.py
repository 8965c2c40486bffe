"""RoI Align benchmark cases: ours vs torchvision.ops in the same run.

Single level: features 1x256x200x272 (an 800x1088 image at stride 4), 512 RoIs, 7x7, sampling 2,
aligned. FPN: 4 levels of an 800x1088 image (strides 4..32), 1000 RoIs, 7x7, sampling 2, ours
`multi_scale_roi_align` vs torchvision.ops.MultiScaleRoIAlign (levels by FPN Eq. 1 in both).
Backward rows time the backward pass only (the forward graph is built once, outside the timing).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

from benchmarks.timing import Case
from detector.ops.roi_align import multi_scale_roi_align, roi_align

IMAGE_HW = (800, 1088)


def _rois(num: int, device: str, seed: int, log_uniform: bool = False) -> Tensor:
    """Tensor[num, 5] boxes inside an 800x1088 image (batch index 0)."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([IMAGE_HW[1], IMAGE_HW[0]], dtype=torch.float32)
    xy = torch.rand(num, 2, generator=g) * size
    if log_uniform:  # proposal-like: sides from 16 to 512 px, spread over the FPN levels
        wh = torch.exp(torch.empty(num, 2).uniform_(math.log(16), math.log(512), generator=g))
    else:
        wh = torch.rand(num, 2, generator=g) * size * 0.5 + 1
    xy2 = torch.minimum(xy + wh, size)
    return torch.cat([torch.zeros(num, 1), xy, xy2], dim=1).to(device)


def _backward_timer(output: Tensor, input: Tensor | list[Tensor]):
    grad = torch.randn_like(output)
    inputs = input if isinstance(input, list) else [input]
    return lambda: torch.autograd.grad(output, inputs, grad, retain_graph=True)


def _single_level_cases(device: str) -> list[Case]:
    torch.manual_seed(0)
    x = torch.randn(1, 256, 200, 272, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rois = _rois(512, device, seed=0)
    args = (7, 0.25, 2, True)
    shape = "1x256x200x272, 512 RoIs, 7x7, s2, aligned"

    def ours(t: Tensor, mode: str = "avg") -> Tensor:
        return roi_align(t, rois, *args, mode=mode)

    def peer(t: Tensor) -> Tensor:
        return torchvision.ops.roi_align(t, rois, *args)

    x_req = x.detach().requires_grad_()
    cases = [
        Case("roi_align", "fwd", shape, lambda: ours(x), lambda: peer(x), goal=0.1),
        Case(
            "roi_align",
            "bwd",
            shape,
            _backward_timer(ours(x_req), x_req),
            _backward_timer(peer(x_req), x_req),
            goal=0.1,
        ),
        Case(
            "roi_align",
            "fwd",
            shape + ", channels-last (both)",
            lambda: ours(x_cl),
            lambda: peer(x_cl),
            goal=0.05,
        ),
        Case(
            "roi_align",
            "fwd",
            shape + ", mode=max (peer: tv avg, context only)",
            lambda: ours(x, "max"),
            lambda: peer(x),
        ),
        Case(
            "roi_align",
            "bwd",
            shape + ", mode=max (peer: tv avg, context only)",
            _backward_timer(ours(x_req, "max"), x_req),
            _backward_timer(peer(x_req), x_req),
        ),
    ]
    return cases


def _fpn_levels(rois: Tensor) -> Tensor:
    """FPN Eq. 1 (k0 = 4, canonical size 224) over P2..P5 -> level index in [0, 4)."""
    # (K, 5) -> (K,) box side sqrt(area)
    side = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).sqrt()
    level = torch.floor(4 + torch.log2(side / 224 + 1e-6)).clamp(2, 5)
    return level.to(torch.int64) - 2


def _fpn_cases(device: str) -> list[Case]:
    torch.manual_seed(1)
    names = ["p2", "p3", "p4", "p5"]
    strides = [4, 8, 16, 32]
    features = {
        name: torch.randn(1, 256, IMAGE_HW[0] // s, IMAGE_HW[1] // s, device=device)
        for name, s in zip(names, strides, strict=True)
    }
    rois = _rois(1000, device, seed=1, log_uniform=True)
    scales = [1.0 / s for s in strides]
    pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    image_sizes = [IMAGE_HW]
    shape = "FPN P2-P5 of 800x1088, 256 ch, 1000 RoIs, 7x7, s2"

    def ours(feats: list[Tensor]) -> Tensor:
        return multi_scale_roi_align(feats, rois, _fpn_levels(rois), 7, scales, 2, False)

    def peer(feats: dict[str, Tensor]) -> Tensor:
        return pooler(feats, [rois[:, 1:]], image_sizes)

    leaves = [features[n].detach().requires_grad_() for n in names]
    peer_leaves = dict(zip(names, [f.detach().requires_grad_() for f in leaves], strict=True))
    return [
        Case(
            "multi_scale_roi_align",
            "fwd",
            shape,
            lambda: ours(list(features.values())),
            lambda: peer(features),
        ),
        Case(
            "multi_scale_roi_align",
            "bwd",
            shape,
            _backward_timer(ours(leaves), leaves),
            _backward_timer(peer(peer_leaves), list(peer_leaves.values())),
        ),
    ]


def cases(device: str) -> list[Case]:
    """The benchmark rows of RoI Align on `device`."""
    return _single_level_cases(device) + _fpn_cases(device)
