"""What the RPN defaults rely on (docs/accuracy.md): with MODEL.RPN.STRADDLE_THRESH -1 (our
default) anchors crossing the image border are trained, so an object filling the frame gets
positive anchors, on the largest FPN level too; maskrcnn_benchmark's 0 (what its files still get)
ignores every such anchor and leaves that object with none."""

from __future__ import annotations

from pathlib import Path

import torch

from detector.config import load_config
from detector.modeling.rpn.anchor_target_creator import POSITIVE
from detector.modeling.rpn.rpn import RPN

BASE = Path(__file__).resolve().parents[3] / "configs" / "Base-RCNN-FPN.yaml"
HEIGHT, WIDTH = 384, 640  # the accuracy benchmark's training size
STRIDES = (4, 8, 16, 32, 64)


def _labels(opts: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """RPN anchor labels (A,) for one frame-filling box, and the anchors of each level."""
    rpn = RPN.from_config(load_config(BASE, opts), in_channels=8)
    features = [torch.zeros(1, 8, HEIGHT // s, WIDTH // s) for s in STRIDES]
    anchors = rpn.anchor_generator(features, (HEIGHT, WIDTH))
    gt = torch.tensor([[6.0, 4.0, 630.0, 380.0]])  # 98% x 98% of the image
    torch.manual_seed(0)
    labels, _ = rpn.target_creator(torch.cat(anchors), gt, (HEIGHT, WIDTH))
    return labels, anchors


def _crosses_border(anchors: torch.Tensor) -> torch.Tensor:
    return (anchors[:, :2] < 0).any(1) | (anchors[:, 2] > WIDTH) | (anchors[:, 3] > HEIGHT)


def test_default_trains_border_crossing_anchors() -> None:
    labels, anchors = _labels([])
    positive = labels == POSITIVE
    assert positive.any()
    assert _crosses_border(torch.cat(anchors))[positive].all()  # every fitting anchor crosses
    p6 = slice(sum(len(a) for a in anchors[:-1]), None)
    assert positive[p6].any()  # the largest level learns


def test_maskrcnn_benchmark_threshold_leaves_the_object_without_positives() -> None:
    labels, anchors = _labels(["VERSION", "1"])
    assert not (labels == POSITIVE).any()
    p6 = slice(sum(len(a) for a in anchors[:-1]), None)
    assert (labels[p6] != POSITIVE).all() and _crosses_border(anchors[-1]).all()
