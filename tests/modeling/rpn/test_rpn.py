"""RPN: head shapes, AnchorTargetCreator on hand-made cases, losses, and equality of the
ProposalCreator with torchvision's RegionProposalNetwork given the same weights and features."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.image_list import ImageList as TVImageList

from detector.modeling.anchor_generator import AnchorGenerator
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.rpn import RPN, AnchorTargetCreator, ProposalCreator, RPNHead
from detector.modeling.rpn.loss import flatten_level_outputs, rpn_losses
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.structures import Boxes, ImageList, Instances


def _target_creator(batch: int = 256, straddle: float = 0.0) -> AnchorTargetCreator:
    return AnchorTargetCreator(
        matcher=Matcher(0.7, 0.3, allow_low_quality_matches=True),
        sampler=BalancedPositiveNegativeSampler(batch, 0.5),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        straddle_thresh=straddle,
    )


def _rpn(in_channels: int, sizes, strides, pre_nms: int, post_nms: int) -> RPN:
    creator = ProposalCreator(
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        pre_nms_top_n=pre_nms,
        post_nms_top_n=pre_nms,  # keep every per-level survivor: torchvision ranks after NMS
        fpn_post_nms_top_n=post_nms,
        nms_thresh=0.7,
        min_size=1e-3,
    )
    return RPN(
        head=RPNHead(in_channels, 3),
        anchor_generator=AnchorGenerator(
            sizes=sizes, aspect_ratios=(0.5, 1.0, 2.0), strides=strides
        ),
        target_creator=_target_creator(straddle=-1),
        train_proposals=creator,
        test_proposals=creator,
    )


def test_head_output_shapes_and_flatten_order() -> None:
    head = RPNHead(8, 3)
    features = [torch.randn(2, 8, 5, 7), torch.randn(2, 8, 3, 4)]
    logits, deltas = head(features)
    assert [t.shape for t in logits] == [(2, 3, 5, 7), (2, 3, 3, 4)]
    assert [t.shape for t in deltas] == [(2, 12, 5, 7), (2, 12, 3, 4)]
    flat_logits, flat_deltas = flatten_level_outputs(logits, deltas)
    assert flat_logits[0].shape == (2, 5 * 7 * 3) and flat_deltas[0].shape == (2, 5 * 7 * 3, 4)
    # location (y=1, x=2), anchor 1 -> index (1 * 7 + 2) * 3 + 1
    idx = (1 * 7 + 2) * 3 + 1
    assert flat_logits[0][1, idx] == logits[0][1, 1, 1, 2]
    assert torch.equal(flat_deltas[0][1, idx], deltas[0][1, 4:8, 1, 2])


def test_anchor_target_creator_hand_made() -> None:
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 -> positive
            [0.0, 0.0, 10.0, 9.0],  # IoU 0.9 -> positive
            [5.0, 0.0, 15.0, 10.0],  # IoU 1/3 -> between thresholds: ignored
            [50.0, 50.0, 60.0, 60.0],  # IoU 0 -> negative
            [-20.0, 0.0, 5.0, 10.0],  # crosses the left border: ignored (straddle 0)
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    labels, targets = _target_creator(straddle=0.0)(anchors, gt, (100, 100))
    assert labels.tolist() == [1.0, 1.0, -1.0, 0.0, -1.0]
    assert torch.allclose(targets[0], torch.zeros(4))
    assert torch.allclose(targets[1], torch.tensor([0.0, 0.5 / 9, 0.0, math.log(10 / 9)]))


def test_anchor_target_creator_without_gt_and_sampling_limits() -> None:
    anchors = torch.rand(1000, 2) * 50
    anchors = torch.cat([anchors, anchors + 20], dim=1)
    labels, _ = _target_creator(batch=64)(anchors, torch.zeros(0, 4), (100, 100))
    assert (labels == 0).sum() == 64 and (labels == 1).sum() == 0
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [30.0, 30.0, 50.0, 50.0]])
    labels, _ = _target_creator(batch=64)(anchors, gt, (100, 100))
    assert 1 <= (labels == 1).sum() <= 32 and (labels >= 0).sum() == 64


def test_losses_normalized_by_sampled_anchors() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    deltas = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0, -1.0]])
    targets = torch.zeros(1, 4, 4)
    losses = rpn_losses(logits, deltas, labels, targets, smooth_l1_beta=1.0 / 9)
    assert torch.allclose(losses["loss_objectness"], torch.tensor(math.log(2.0)))
    assert torch.allclose(losses["loss_rpn_box_reg"], torch.tensor((1.0 - 0.5 / 9) / 2))


@pytest.mark.parametrize("training", [False, True])
def test_proposals_equal_torchvision(training: bool) -> None:
    torch.manual_seed(0)
    sizes, strides = ((32,), (64,), (128,)), (4, 8, 16)
    tv = tv_rpn.RegionProposalNetwork(
        tv_rpn.AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 3),
        tv_rpn.RPNHead(16, 3),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 400, "testing": 300},
        post_nms_top_n={"training": 200, "testing": 100},
        nms_thresh=0.7,
    )
    ours = _rpn(
        16, sizes, strides, pre_nms=400 if training else 300, post_nms=200 if training else 100
    )
    with torch.no_grad():  # larger weights than the 0.01 init, so that scores have no ties
        for name, param in tv.head.named_parameters():
            param.normal_(0, 0.3 if name.endswith("weight") else 0.1)
    ours.head.load_state_dict(
        {k.replace("conv.0.0.", "conv."): v for k, v in tv.head.state_dict().items()}, strict=True
    )
    features = [torch.randn(2, 16, 32, 40), torch.randn(2, 16, 16, 20), torch.randn(2, 16, 8, 10)]
    image_sizes = [(128, 160), (120, 150)]
    gt = [torch.tensor([[10.0, 20.0, 60.0, 90.0]]), torch.tensor([[30.0, 30.0, 100.0, 70.0]])]
    tv.train(training)
    ours.train(training)
    torch.manual_seed(1)
    tv_boxes, _ = tv(
        TVImageList(torch.zeros(2, 3, 128, 160), image_sizes),
        OrderedDict(zip("abc", features, strict=True)),
        [{"boxes": b} for b in gt] if training else None,
    )
    targets = [Instances(s, gt_boxes=Boxes(b)) for s, b in zip(image_sizes, gt, strict=True)]
    proposals, losses = ours(
        ImageList(torch.zeros(2, 3, 128, 160), image_sizes), features, targets if training else None
    )
    for p, t in zip(proposals, tv_boxes, strict=True):
        assert len(p) == len(t) > 0
        torch.testing.assert_close(p.proposal_boxes.tensor, t, rtol=0, atol=1e-4)
    assert set(losses) == ({"loss_objectness", "loss_rpn_box_reg"} if training else set())
