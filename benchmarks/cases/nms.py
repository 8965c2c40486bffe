"""Benchmark cases of `nms`: RPN-like proposals (most boxes kept) and a dense cluster (few kept).

RPN-like: 12,000 boxes with centers uniform in an 800 x 1088 image, widths and heights uniform in
16..400, random scores, IoU 0.7 (the baseline of docs/benchmarks.md). Dense: 12,000 boxes of
about 100 x 100 around one point. batched_nms: the RPN-like boxes in 80 categories, IoU 0.5.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from benchmarks.timing import Case
from detector.ops import batched_nms, nms


def rpn_like_boxes(num: int, device: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Tensor[num, 4] xyxy proposals of an 800 x 1088 image and Tensor[num] random scores."""
    g = torch.Generator().manual_seed(seed)
    center = torch.rand(num, 2, generator=g) * torch.tensor([1088.0, 800.0])  # (num, 2) x, y
    size = 16 + torch.rand(num, 2, generator=g) * 384  # (num, 2) w, h
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    return boxes.to(device), torch.rand(num, generator=g).to(device)


def dense_cluster_boxes(num: int, device: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Tensor[num, 4] boxes of about 100 x 100 px jittered around one point, random scores."""
    g = torch.Generator().manual_seed(seed)
    center = torch.tensor([500.0, 400.0]) + torch.randn(num, 2, generator=g) * 20
    size = 100 + torch.randn(num, 2, generator=g) * 10
    boxes = torch.cat([center - size / 2, center + size / 2], dim=1)
    return boxes.to(device), torch.rand(num, generator=g).to(device)


def cases(device: str) -> list[Case]:
    rpn_boxes, rpn_scores = rpn_like_boxes(12000, device)
    dense_boxes, dense_scores = dense_cluster_boxes(12000, device)
    idxs = torch.randint(0, 80, (12000,), generator=torch.Generator().manual_seed(1)).to(device)
    return [
        Case(
            "nms",
            "fwd",
            "12000 RPN-like boxes, IoU 0.7",
            lambda: nms(rpn_boxes, rpn_scores, 0.7),
            lambda: torchvision.ops.nms(rpn_boxes, rpn_scores, 0.7),
            goal=0.2,
        ),
        Case(
            "nms",
            "fwd",
            "12000 boxes in a dense cluster, IoU 0.7",
            lambda: nms(dense_boxes, dense_scores, 0.7),
            lambda: torchvision.ops.nms(dense_boxes, dense_scores, 0.7),
        ),
        Case(
            "batched_nms",
            "fwd",
            "12000 RPN-like boxes, 80 categories, IoU 0.5",
            lambda: batched_nms(rpn_boxes, rpn_scores, idxs, 0.5),
            lambda: torchvision.ops.batched_nms(rpn_boxes, rpn_scores, idxs, 0.5),
        ),
    ]
