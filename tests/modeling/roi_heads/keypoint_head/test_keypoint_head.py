"""Keypoint head: targets and loss equal torchvision's keypointrcnn_loss, decoding equals its
heatmaps_to_keypoints, the head from configs (every plain pooler), training and inference."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads

from detector.config import get_cfg, merge_opts
from detector.modeling.roi_heads.keypoint_head import (
    KeypointHead,
    build_keypoint_head,
    heatmaps_to_keypoints,
    keypoint_rcnn_loss,
    keypoint_rcnn_targets,
)
from detector.structures import Boxes, Instances, Keypoints

K = 5  # keypoints
S = 8  # heatmap side


def _gt_keypoints(generator: torch.Generator, num: int) -> torch.Tensor:
    """(num, K, 3) keypoints in a 64 x 64 image; v in {0, 1, 2}."""
    xy = torch.rand(num, K, 2, generator=generator) * 64
    v = torch.randint(0, 3, (num, K, 1), generator=generator).float()
    return torch.cat([xy, v], dim=2)


def _case(seed: int) -> tuple[list[Instances], list[Instances]]:
    """Per image: positive RoIs (proposal_boxes, gt_classes, matched_gt_idx) and targets with
    gt_keypoints; some keypoints on a RoI's right/bottom edge, some outside their RoI."""
    generator = torch.Generator().manual_seed(seed)
    rois, targets = [], []
    for num_gt, num_rois in ((3, 6), (2, 4), (1, 0)):
        keypoints = _gt_keypoints(generator, num_gt)
        x1y1 = torch.rand(num_rois, 2, generator=generator) * 32
        boxes = torch.cat([x1y1, x1y1 + 8 + torch.rand(num_rois, 2, generator=generator) * 24], 1)
        matched = torch.randint(0, num_gt, (num_rois,), generator=generator)
        if num_rois:  # exactly on the right and bottom edges of the first RoI
            keypoints[matched[0], 0, :2] = boxes[0, 2:]
            keypoints[matched[0], 0, 2] = 2
        targets.append(Instances((64, 64), gt_keypoints=Keypoints(keypoints)))
        rois.append(
            Instances(
                (64, 64),
                proposal_boxes=Boxes(boxes),
                gt_classes=torch.ones(num_rois, dtype=torch.int64),
                matched_gt_idx=matched,
            )
        )
    return rois, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_and_loss_equal_torchvision(seed: int) -> None:
    rois, targets = _case(seed)
    num_rois = sum(len(r) for r in rois)
    logits = torch.randn(num_rois, K, S, S, generator=torch.Generator().manual_seed(seed))
    cells, valid = keypoint_rcnn_targets(rois, targets, S)
    tv_cells, tv_valid = zip(
        *[
            tv_roi_heads.keypoints_to_heatmap(
                t.gt_keypoints.tensor[r.matched_gt_idx], r.proposal_boxes.tensor, S
            )
            for r, t in zip(rois, targets, strict=True)
        ],
        strict=True,
    )
    assert torch.equal(valid, torch.cat(tv_valid).bool())
    assert torch.equal(cells, torch.cat(tv_cells))
    assert bool(valid.any()) and not bool(valid.all())  # both kinds occur
    ours = keypoint_rcnn_loss(logits, cells, valid)
    theirs = tv_roi_heads.keypointrcnn_loss(
        logits,
        [r.proposal_boxes.tensor for r in rois],
        [t.gt_keypoints.tensor for t in targets],
        [r.matched_gt_idx for r in rois],
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_loss_without_valid_keypoints_is_zero_with_gradient() -> None:
    logits = torch.randn(2, K, S, S, requires_grad=True)
    loss = keypoint_rcnn_loss(
        logits, torch.zeros(2, K, dtype=torch.int64), torch.zeros(2, K).bool()
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_decoding_equals_torchvision(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x1y1 = torch.rand(7, 2, generator=generator) * 50
    sizes = torch.rand(7, 2, generator=generator) * 60 + 0.3  # some under 1 px (clamped)
    boxes = torch.cat([x1y1, x1y1 + sizes], dim=1)
    heatmaps = torch.randn(7, K, 56, 56, generator=generator)
    ours = heatmaps_to_keypoints(heatmaps, boxes)
    xy, scores = tv_roi_heads.heatmaps_to_keypoints(heatmaps, boxes)
    assert ours.shape == (7, K, 3)
    torch.testing.assert_close(ours[..., :2], xy[..., :2], rtol=0, atol=0)
    torch.testing.assert_close(ours[..., 2], scores, rtol=0, atol=0)


def test_decoding_no_boxes_and_bad_shapes() -> None:
    assert heatmaps_to_keypoints(torch.zeros(0, K, 56, 56), torch.zeros(0, 4)).shape == (0, K, 3)
    with pytest.raises(ValueError, match=r"heatmaps \(R, K, S, S\) and boxes \(R, 4\)"):
        heatmaps_to_keypoints(torch.zeros(2, K, 56, 56), torch.zeros(3, 4))


def _cfg(*opts: str):
    return merge_opts(
        get_cfg(),
        [
            "MODEL.KEYPOINT_ON", "True",
            "MODEL.ROI_KEYPOINT_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False",
            "MODEL.ROI_KEYPOINT_HEAD.POOLER_SCALES", "(0.25,)",
            "MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS", "(8, 8)",
            "MODEL.ROI_KEYPOINT_HEAD.RESOLUTION", "56",
            "MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES", str(K),
            *opts,
        ],
    )  # fmt: skip


POOLER_TYPES = [
    "ROIPool", "ROIAlign", "ROIAlignV2", "ROIAlignMax", "DeformRoIPool", "ModulatedDeformRoIPool",
]  # fmt: skip


@pytest.mark.parametrize("pooler_type", POOLER_TYPES)
def test_head_trains_and_infers_with_every_plain_pooler(pooler_type: str, one_thread) -> None:
    head = build_keypoint_head(_cfg("MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE", pooler_type), 4)
    features = [torch.randn(3, 4, 16, 16)]
    rois, targets = _case(0)
    head.train()
    _, losses = head(features, rois, targets)
    losses["loss_keypoint"].backward()
    loss = losses["loss_keypoint"].detach()
    assert torch.isfinite(loss) and float(loss) > 0
    assert head.predictor.kps_score_lowres.weight.grad.abs().sum() > 0
    head.eval()
    detections = [
        Instances((64, 64), pred_boxes=r.proposal_boxes, scores=torch.ones(len(r))) for r in rois
    ]
    with torch.no_grad():
        results, _ = head(features, detections)
    for dets, result in zip(detections, results, strict=True):
        assert result.pred_keypoints.shape == (len(dets), K, 3)
        boxes = dets.pred_boxes.tensor[:, None]  # (R, 1, 4): keypoints lie in their boxes
        inside = (result.pred_keypoints[..., 0] >= boxes[..., 0]) & (
            result.pred_keypoints[..., 0] <= boxes[..., 2]
        )
        assert bool(inside.all())


def test_head_background_rois_do_not_count() -> None:
    """Only positive RoIs (gt_classes > 0) get keypoint targets: with all RoIs background, the
    loss is 0."""
    head = build_keypoint_head(_cfg(), 4).train()
    rois, targets = _case(1)
    background = [
        Instances(
            r.image_size, **{**r.fields(), "gt_classes": torch.zeros(len(r), dtype=torch.int64)}
        )
        for r in rois
    ]
    _, losses = head([torch.randn(3, 4, 16, 16)], background, targets)
    assert float(losses["loss_keypoint"].detach()) == 0.0


def test_head_heatmaps_when_not_decoding() -> None:
    head = build_keypoint_head(_cfg(), 4).eval()
    head.decode = False
    dets = [Instances((64, 64), pred_boxes=Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0]])))]
    with torch.no_grad():
        (result,), _ = head([torch.randn(1, 4, 16, 16)], dets)
    assert result.pred_keypoint_heatmaps.shape == (1, K, 56, 56)
    assert not result.has("pred_keypoints")


def test_head_without_detections() -> None:
    head = build_keypoint_head(_cfg(), 4).eval()
    with torch.no_grad():
        (result,), _ = head([torch.randn(1, 4, 16, 16)], [Instances((64, 64))])
    assert result.pred_keypoints.shape == (0, K, 3)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["MODEL.ROI_KEYPOINT_HEAD.RESOLUTION", "28"], "set MODEL.ROI_KEYPOINT_HEAD.RESOLUTION 56"),
        (["MODEL.ROI_KEYPOINT_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "True"], "not supported"),
        (["MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE", "PSRoIAlign"], "position-sensitive"),
        (["MODEL.ROI_KEYPOINT_HEAD.FEATURE_EXTRACTOR", "Nope"], "Known names"),
    ],
)
def test_bad_head_configs(opts: list[str], message: str) -> None:
    with pytest.raises((ValueError, KeyError), match=message):
        build_keypoint_head(_cfg(*opts), 4)


def test_training_needs_keypoint_targets() -> None:
    head = build_keypoint_head(_cfg(), 4).train()
    rois, _ = _case(0)
    targets = [Instances((64, 64)) for _ in rois]
    with pytest.raises(ValueError, match=r"targets\[0\] has no gt_keypoints"):
        head([torch.randn(3, 4, 16, 16)], rois, targets)


def test_head_is_a_keypoint_head() -> None:
    assert isinstance(build_keypoint_head(_cfg(), 4), KeypointHead)
