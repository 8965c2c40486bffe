"""ProposalTargetCreator: hand-made matching cases, sampling counts, images without boxes, and
equality with torchvision's RoIHeads.select_training_samples when every RoI fits the batch."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads

from detector.config import get_cfg
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.roi_heads import ProposalTargetCreator
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.structures import Boxes, Instances


def _creator(
    batch: int = 512, fraction: float = 0.25, fg: float = 0.5, bg: float = 0.5, bg_lo: float = 0.0
) -> ProposalTargetCreator:
    return ProposalTargetCreator(
        matcher=Matcher(fg, bg, allow_low_quality_matches=False),
        sampler=BalancedPositiveNegativeSampler(batch, fraction),
        box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
        bg_iou_threshold_lo=bg_lo,
    )


def _proposals(boxes: list[list[float]], size: tuple[int, int] = (100, 100)) -> Instances:
    return Instances(size, proposal_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)))


def _targets(boxes: list[list[float]], classes: list[int], size=(100, 100)) -> Instances:
    return Instances(
        size,
        gt_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)),
        gt_classes=torch.tensor(classes, dtype=torch.int64),
    )


def _rows(boxes: Boxes) -> list[list[float]]:
    return boxes.tensor.tolist()


def test_hand_made_matching_adds_gt_and_keeps_order() -> None:
    gt = _targets([[0, 0, 10, 10], [50, 50, 70, 70]], [3, 7])
    proposals = _proposals(
        [
            [0, 0, 10, 9],  # IoU 0.9 with gt 0 -> class 3
            [5, 0, 15, 10],  # IoU 1/3 with gt 0 -> background
            [50, 50, 70, 68],  # IoU 0.9 with gt 1 -> class 7
            [80, 80, 90, 90],  # IoU 0 -> background
        ]
    )
    (rois,) = _creator()([proposals], [gt])
    # nothing ignored and the batch is large: every RoI, in order, gt boxes appended
    assert _rows(rois.proposal_boxes) == [
        [0, 0, 10, 9], [5, 0, 15, 10], [50, 50, 70, 68], [80, 80, 90, 90],
        [0, 0, 10, 10], [50, 50, 70, 70],
    ]  # fmt: skip
    assert rois.gt_classes.tolist() == [3, 0, 7, 0, 3, 7]
    assert rois.matched_gt_idx.tolist() == [0, -1, 1, -1, 0, 1]
    assert rois.matched_gt_idx.dtype == torch.int64
    # foreground: the matched gt; background: the RoI itself (regression target 0)
    assert _rows(rois.gt_boxes) == [
        [0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 70, 70], [80, 80, 90, 90],
        [0, 0, 10, 10], [50, 50, 70, 70],
    ]  # fmt: skip
    targets = _creator().encode(rois)
    assert torch.allclose(targets[1], torch.zeros(4)) and torch.allclose(targets[4], torch.zeros(4))
    # proposal 0: centre y 4.5 -> 5, height 9 -> 10: (0, 10 * 0.5 / 9, 0, 5 * log(10 / 9))
    expected = torch.tensor([0.0, 10 * 0.5 / 9, 0.0, 5 * torch.log(torch.tensor(10 / 9)).item()])
    assert torch.allclose(targets[0], expected)


def test_ignored_between_thresholds_and_below_bg_lo() -> None:
    gt = _targets([[0, 0, 10, 10]], [1])
    proposals = _proposals(
        [
            [0, 0, 10, 6],  # IoU 0.6: between BG 0.5 and FG 0.7 -> ignored
            [0, 0, 10, 4],  # IoU 0.4 -> background
            [0, 0, 10, 0.5],  # IoU 0.05 < BG_LO 0.1 -> ignored
            [0, 0, 10, 8],  # IoU 0.8 -> foreground
        ]
    )
    (rois,) = _creator(fg=0.7, bg=0.5, bg_lo=0.1)([proposals], [gt])
    assert _rows(rois.proposal_boxes) == [[0, 0, 10, 4], [0, 0, 10, 8], [0, 0, 10, 10]]
    assert rois.gt_classes.tolist() == [0, 1, 1]


def test_sample_counts_and_foreground_fraction() -> None:
    torch.manual_seed(0)
    gt = _targets([[10, 10, 60, 60]], [2])
    jitter = torch.rand(100, 4) * 2  # IoU > 0.85 with the gt: 100 foreground candidates
    fg = torch.tensor([10.0, 10, 60, 60]) + jitter
    bg = torch.tensor([70.0, 70, 90, 90]).expand(100, 4) + torch.rand(100, 4)
    proposals = Instances((100, 100), proposal_boxes=Boxes(torch.cat([fg, bg])))
    generator = torch.Generator().manual_seed(1)
    (rois,) = _creator(batch=16, fraction=0.25)([proposals], [gt], generator=generator)
    assert len(rois) == 16
    assert int((rois.gt_classes == 2).sum()) == 4  # 16 * 0.25
    assert int((rois.gt_classes == 0).sum()) == 12
    # too few foreground: the background fills the batch
    few = Instances((100, 100), proposal_boxes=Boxes(bg))
    (rois,) = _creator(batch=16, fraction=0.25)([few], [gt], generator=generator)
    assert len(rois) == 16 and int((rois.gt_classes > 0).sum()) == 1  # the gt box itself


def test_image_without_boxes_is_all_background() -> None:
    empty = _targets([], [])
    proposals = _proposals([[0, 0, 10, 10], [20, 20, 40, 50], [1, 1, 2, 2]])
    rois_a, rois_b = _creator(batch=4)(
        [proposals, proposals], [empty, _targets([[0, 0, 10, 10]], [5])]
    )
    assert len(rois_a) == 3
    assert rois_a.gt_classes.tolist() == [0, 0, 0]
    assert rois_a.matched_gt_idx.tolist() == [-1, -1, -1]
    assert torch.isfinite(_creator().encode(rois_a)).all()
    assert 5 in rois_b.gt_classes.tolist()  # the other image keeps its foreground
    # no proposals either
    (rois,) = _creator()([_proposals([])], [empty])
    assert len(rois) == 0


def test_matched_gt_idx_indexes_the_targets() -> None:
    torch.manual_seed(0)
    gt_boxes = torch.tensor([[0.0, 0, 30, 30], [40, 40, 90, 80], [10, 50, 35, 95]])
    gt = _targets(gt_boxes.tolist(), [4, 2, 9])
    xy = torch.rand(300, 2) * 70
    wh = torch.rand(300, 2) * 40 + 5
    proposals = Instances((100, 100), proposal_boxes=Boxes(torch.cat([xy, xy + wh], dim=1)))
    (rois,) = _creator(batch=128)([proposals], [gt])
    fg = rois.gt_classes > 0
    assert fg.any()
    idx = rois.matched_gt_idx[fg]
    assert torch.equal(rois.gt_classes[fg], gt.gt_classes[idx])
    assert torch.equal(rois.gt_boxes.tensor[fg], gt_boxes[idx])
    assert (rois.matched_gt_idx[~fg] == -1).all()


def test_equals_torchvision_select_training_samples_when_everything_fits() -> None:
    torch.manual_seed(0)
    gt_boxes = torch.tensor([[0.0, 0, 30, 30], [40, 40, 90, 80]])
    labels = torch.tensor([1, 3])
    xy = torch.rand(60, 2) * 70
    proposal_boxes = torch.cat([xy, xy + torch.rand(60, 2) * 40 + 5], dim=1)
    # batch and fraction large enough that every labelled RoI is sampled: no randomness left
    ours = _creator(batch=1000, fraction=0.5)(
        [Instances((100, 100), proposal_boxes=Boxes(proposal_boxes))],
        [_targets(gt_boxes.tolist(), labels.tolist())],
    )[0]
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 1000, 0.5, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100)
    tv_props, tv_matched, tv_labels, tv_targets = tv.select_training_samples(
        [proposal_boxes], [{"boxes": gt_boxes, "labels": labels}]
    )
    assert torch.equal(ours.proposal_boxes.tensor, tv_props[0])
    assert torch.equal(ours.gt_classes, tv_labels[0])
    fg = ours.gt_classes > 0
    assert torch.equal(ours.matched_gt_idx[fg], tv_matched[0][fg])
    assert torch.equal(_creator().encode(ours)[fg], tv_targets[0][fg])


def test_from_config_reads_roi_heads_keys() -> None:
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.5
    cfg.MODEL.ROI_HEADS.FG_IOU_THRESHOLD = 0.6
    cfg.MODEL.ROI_HEADS.BG_IOU_THRESHOLD = 0.4
    cfg.MODEL.ROI_HEADS.BG_IOU_THRESHOLD_LO = 0.1
    creator = ProposalTargetCreator.from_config(cfg)
    assert creator.sampler.batch_size_per_image == 64
    assert creator.sampler.positive_fraction == 0.5
    assert (creator.matcher.high_threshold, creator.matcher.low_threshold) == (0.6, 0.4)
    assert creator.bg_iou_threshold_lo == 0.1
    assert creator.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_mismatched_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 images of proposals but 1"):
        _creator()([_proposals([]), _proposals([])], [_targets([], [])])
