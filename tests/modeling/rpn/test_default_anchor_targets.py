"""What the RPN defaults rely on (docs/accuracy.md). With MODEL.RPN.STRADDLE_THRESH -1 (our
default) anchors crossing the image border are trained, so an object filling the frame gets
positive anchors, on the largest FPN level too; maskrcnn_benchmark's 0 (what its files still get)
ignores every such anchor and leaves that object with none. With MODEL.RPN.FPN_POST_NMS_PER_BATCH
False (our default) each training image keeps its own FPN_POST_NMS_TOP_N_TRAIN proposals;
maskrcnn_benchmark's True ranks them over the batch, so one image can take nearly all."""

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


def _train_proposal_counts(opts: list[str]) -> list[int]:
    """Training proposals per image for a 2-image batch whose first image scores far higher."""
    rpn = RPN.from_config(load_config(BASE, opts), in_channels=8)
    features = [torch.zeros(1, 8, HEIGHT // s, WIDTH // s) for s in STRIDES]
    anchors = rpn.anchor_generator(features, (HEIGHT, WIDTH))
    generator = torch.Generator().manual_seed(0)
    logits, deltas = [], []
    for a in anchors:
        level = torch.randn(2, len(a), generator=generator)  # (N, A_l)
        logits.append(level + torch.tensor([[10.0], [0.0]]))  # image 0 is 10 logits ahead
        deltas.append(torch.zeros(2, len(a), 4))
    proposals = rpn.train_proposals(anchors, logits, deltas, [(HEIGHT, WIDTH)] * 2)
    return [len(p) for p in proposals]


def test_default_keeps_the_training_proposals_per_image() -> None:
    cfg = load_config(BASE, [])
    top_n = cfg.MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN
    first, second = _train_proposal_counts([])
    assert first == second  # each image its own best, whatever the other image scores
    assert 0 < first <= top_n


def test_maskrcnn_benchmark_ranks_the_training_proposals_over_the_batch() -> None:
    first, second = _train_proposal_counts(["VERSION", "1"])
    assert second < first / 10  # the batch's top N go to the high-scoring image
