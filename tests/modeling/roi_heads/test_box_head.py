"""Box head: losses (a hand case, torchvision's fastrcnn_loss), inference (equality with
torchvision's RoIHeads.postprocess_detections), feature extractors and predictors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import fastrcnn_loss

from detector import ops
from detector.config import get_cfg
from detector.modeling.box_coder import BoxCoder
from detector.modeling.registry import ROI_BOX_FEATURE_EXTRACTORS, ROI_BOX_PREDICTORS
from detector.modeling.roi_heads.box_head import (
    BoxPostProcessor,
    FastRCNNPredictor,
    FPNPredictor,
    RFCNPredictor,
    VGG16FC67FeatureExtractor,
    build_box_feature_extractor,
    build_box_predictor,
    fast_rcnn_losses,
)
from detector.structures import Boxes


def _smooth_l1(x: float, beta: float) -> float:
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def test_loss_hand_case() -> None:
    class_logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    box_deltas = torch.zeros(3, 12)
    box_deltas[1, 4:8] = torch.tensor([0.5, -2.0, 0.0, 0.1])  # RoI 1, class 1
    box_deltas[1, 8:12] = 100.0  # another class: not in the loss
    box_deltas[0] = 100.0  # background RoI: not in the loss
    gt_classes = torch.tensor([0, 1, 2])
    targets = torch.tensor([[9.0, 9, 9, 9], [0.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0]])
    losses = fast_rcnn_losses(class_logits, box_deltas, gt_classes, targets, smooth_l1_beta=1.0)
    # cross-entropy: -log softmax of the right class, averaged over the 3 RoIs
    ce = [
        -(2.0 - math.log(math.exp(2) + 2)),
        -(1.0 - math.log(math.e + 2)),
        -(0.0 - math.log(3.0)),
    ]
    assert losses["loss_classifier"].item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    # smooth L1 (beta 1) on the 2 foreground RoIs, divided by the 3 sampled RoIs
    box = sum(_smooth_l1(d, 1.0) for d in (0.5, -2.0, 0.0, 0.1)) + _smooth_l1(-0.2, 1.0)
    assert losses["loss_box_reg"].item() == pytest.approx(box / 3, rel=1e-6)


def test_loss_equals_torchvision_fastrcnn_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(50, 6, generator=generator)
    box_deltas = torch.randn(50, 24, generator=generator)
    labels = torch.randint(0, 6, (50,), generator=generator)
    targets = torch.randn(50, 4, generator=generator)
    ours = fast_rcnn_losses(class_logits, box_deltas, labels, targets, smooth_l1_beta=1 / 9)
    tv_cls, tv_box = fastrcnn_loss(class_logits, box_deltas, [labels[:20], labels[20:]],
                                   [targets[:20], targets[20:]])  # fmt: skip
    torch.testing.assert_close(ours["loss_classifier"], tv_cls, rtol=0, atol=0)
    torch.testing.assert_close(ours["loss_box_reg"], tv_box)


def test_loss_class_agnostic_and_empty() -> None:
    box_deltas = torch.zeros(2, 8)
    box_deltas[:, 4:] = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 3.0]])
    losses = fast_rcnn_losses(
        torch.zeros(2, 5), box_deltas, torch.tensor([3, 4]), torch.zeros(2, 4), 1.0, True
    )
    assert losses["loss_box_reg"].item() == pytest.approx((0.5 + 2.5) / 2)
    logits = torch.zeros(0, 5, requires_grad=True)
    empty = fast_rcnn_losses(logits, torch.zeros(0, 20), torch.zeros(0, dtype=torch.int64),
                             torch.zeros(0, 4))  # fmt: skip
    assert empty["loss_classifier"].item() == 0 and empty["loss_box_reg"].item() == 0
    empty["loss_classifier"].backward()
    assert logits.grad is not None


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("score_thresh", "detections"), [(0.05, 100), (0.0, 7), (0.3, 100)])
def test_postprocess_equals_torchvision(score_thresh: float, detections: int) -> None:
    generator = torch.Generator().manual_seed(1)
    num_classes, image_sizes = 5, [(80, 100), (60, 50)]
    proposals = []
    for height, width in image_sizes:
        xy = torch.rand(30, 2, generator=generator) * torch.tensor([width, height])
        wh = torch.rand(30, 2, generator=generator) * 40 + 0.5
        proposals.append(torch.cat([xy, xy + wh], dim=1))  # some leave the image
    proposals[0][0] = torch.tensor([10.0, 10.0, 10.001, 30.0])  # a box below min_size 0.01
    class_logits = torch.randn(60, num_classes, generator=generator) * 2
    box_deltas = torch.randn(60, 4 * num_classes, generator=generator)
    box_deltas[0] = 0.0
    box_deltas[1] = 8.0  # clamped log-scale deltas
    ours = BoxPostProcessor(
        box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
        score_thresh=score_thresh,
        nms_thresh=0.5,
        detections_per_img=detections,
    )(class_logits, box_deltas, [Boxes(p) for p in proposals], image_sizes)
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, score_thresh, 0.5, detections)
    tv_boxes, tv_scores, tv_labels = tv.postprocess_detections(
        class_logits, box_deltas, proposals, image_sizes
    )
    for image, result in enumerate(ours):
        assert len(result) > 0
        assert torch.equal(result.pred_boxes.tensor, tv_boxes[image])
        assert torch.equal(result.scores, tv_scores[image])
        assert torch.equal(result.pred_classes, tv_labels[image])
        assert result.image_size == image_sizes[image]


def test_postprocess_class_agnostic_uses_one_box_for_every_class() -> None:
    proposals = [Boxes(torch.tensor([[10.0, 10, 30, 30]]))]
    box_deltas = torch.tensor([[9.0, 9, 9, 9, 10.0, 0, 0, 0]])  # bg column ignored; dx = 1
    logits = torch.tensor([[0.0, 3.0, 3.0]])
    processor = BoxPostProcessor(box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
                                 cls_agnostic_bbox_reg=True)  # fmt: skip
    (result,) = processor(logits, box_deltas, proposals, [(100, 100)])
    assert result.pred_classes.tolist() == [1, 2]
    expected = torch.tensor([[30.0, 10, 50, 30]] * 2)  # moved by 1 * width
    torch.testing.assert_close(result.pred_boxes.tensor, expected)


# --------------------------------------------------------------------------------------------
# Feature extractors and predictors
# --------------------------------------------------------------------------------------------
def _box_cfg(extractor: str, predictor: str = "FPNPredictor", **keys):
    cfg = get_cfg()
    head = cfg.MODEL.ROI_BOX_HEAD
    head.FEATURE_EXTRACTOR = extractor
    head.PREDICTOR = predictor
    head.POOLER_RESOLUTION = 7
    head.MLP_HEAD_DIM = 16
    head.NUM_CLASSES = 3
    for key, value in keys.items():
        setattr(head, key, value)
    return cfg


def test_mlp_extractor_and_fpn_predictor() -> None:
    cfg = _box_cfg("FPN2MLPFeatureExtractor")
    extractor = build_box_feature_extractor(cfg, in_channels=8)
    predictor = build_box_predictor(cfg, extractor.out_channels)
    x = torch.randn(5, 8, 7, 7)
    features = extractor(x)
    assert features.shape == (5, 16) and (features >= 0).all()
    manual = torch.relu(extractor.fc7(torch.relu(extractor.fc6(x.flatten(1)))))
    torch.testing.assert_close(features, manual)
    logits, deltas = predictor(features)
    assert logits.shape == (5, 3) and deltas.shape == (5, 12)
    assert isinstance(predictor, FPNPredictor)


def test_mlp_extractor_with_group_norm_as_maskrcnn_benchmark() -> None:
    """ROI_BOX_HEAD.USE_GN with the 2-MLP head: fc6/fc7 without bias, each followed by
    GroupNorm over its outputs (keys fc6.0 / fc6.1, as maskrcnn_benchmark's make_fc)."""
    cfg = _box_cfg("FPN2MLPFeatureExtractor", USE_GN=True)
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = 4
    extractor = build_box_feature_extractor(cfg, in_channels=8)
    assert sorted(extractor.state_dict()) == [
        "fc6.0.weight", "fc6.1.bias", "fc6.1.weight", "fc7.0.weight", "fc7.1.bias", "fc7.1.weight",
    ]  # fmt: skip
    assert extractor.fc6[1].num_groups == 4
    x = torch.randn(5, 8, 7, 7)
    features = extractor(x)
    manual = torch.relu(extractor.fc7(torch.relu(extractor.fc6(x.flatten(1)))))
    torch.testing.assert_close(features, manual)
    group = features.new_tensor(0)
    pre = extractor.fc6(x.flatten(1)).view(5, 4, 4)  # (R, groups, channels per group)
    torch.testing.assert_close(pre.mean(-1), group.expand(5, 4), atol=1e-5, rtol=0)
    cfg.MODEL.GROUP_NORM.DIM_PER_GP = 8
    assert build_box_feature_extractor(cfg, in_channels=8).fc6[1].num_groups == 2


def test_xconv_extractor_with_group_norm() -> None:
    cfg = _box_cfg("FPNXconv1fcFeatureExtractor", USE_GN=True, NUM_STACKED_CONVS=2,
                   CONV_HEAD_DIM=8)  # fmt: skip
    cfg.MODEL.GROUP_NORM.NUM_GROUPS = 4
    extractor = build_box_feature_extractor(cfg, in_channels=6)
    norms = [m for m in extractor.modules() if isinstance(m, nn.GroupNorm)]
    convs = [m for m in extractor.modules() if isinstance(m, nn.Conv2d)]
    assert len(norms) == 2 and norms[0].num_groups == 4
    assert len(convs) == 2 and all(c.bias is None for c in convs)
    assert extractor(torch.randn(3, 6, 7, 7)).shape == (3, 16)


def test_res5_extractor_and_fast_rcnn_predictor_average_pool() -> None:
    cfg = _box_cfg("ResNet50Conv5ROIFeatureExtractor", "FastRCNNPredictor", POOLER_RESOLUTION=6)
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-C4"
    extractor = build_box_feature_extractor(cfg, in_channels=256)
    features = extractor(torch.randn(2, 256, 6, 6))
    assert features.shape == (2, 512, 3, 3) and extractor.out_channels == 512
    predictor = build_box_predictor(cfg, extractor.out_channels)
    logits, deltas = predictor(features)
    pooled = features.mean(dim=(2, 3))
    torch.testing.assert_close(logits, predictor.cls_score(pooled))
    torch.testing.assert_close(deltas, predictor.bbox_pred(pooled))
    with pytest.raises(ValueError, match="res5 takes 256 channels but the pooled features have 64"):
        build_box_feature_extractor(cfg, in_channels=64)


def test_vgg_extractor_keys_match_torchvision_classifier() -> None:
    with torch.device("meta"):
        tv_classifier = torchvision.models.vgg16().classifier[:5]
        ours = VGG16FC67FeatureExtractor(in_channels=512, resolution=7, hidden_dim=4096)
    tv_shapes = {f"classifier.{k}": v.shape for k, v in tv_classifier.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == tv_shapes
    # no dropout: deterministic in training mode
    small = VGG16FC67FeatureExtractor(in_channels=2, resolution=2, hidden_dim=8).train()
    x = torch.randn(4, 2, 2, 2)
    assert torch.equal(small(x), small(x))


def test_class_agnostic_fast_rcnn_predictor_has_two_regressors() -> None:
    predictor = FastRCNNPredictor(in_channels=4, num_classes=7, cls_agnostic_bbox_reg=True)
    assert predictor.bbox_pred.out_features == 8 and predictor.cls_score.out_features == 7


@pytest.mark.parametrize("pooler_type", ["PSRoIAlign", "PSRoIPool", "DeformPSRoIPool"])
def test_rfcn_predictor_votes_over_position_sensitive_maps(pooler_type: str) -> None:
    cfg = _box_cfg("FPN2MLPFeatureExtractor", "RFCNPredictor", POOLER_TYPE=pooler_type,
                   POOLER_RESOLUTION=3, POOLER_SCALES=[1 / 16], CONV_HEAD_DIM=8,
                   POOLER_SAMPLING_RATIO=2)  # fmt: skip
    cfg.MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG = True
    predictor = build_box_predictor(cfg, in_channels=6)
    assert isinstance(predictor, RFCNPredictor) and predictor.pools_own_maps
    assert predictor.cls_score.out_channels == 9 * 3 and predictor.bbox_pred.out_channels == 9 * 4
    features = [torch.randn(2, 6, 10, 12)]
    boxes = [Boxes(torch.tensor([[0.0, 0, 100, 120], [30, 20, 90, 60]])),
             Boxes(torch.tensor([[16.0, 16, 150, 140]]))]  # fmt: skip
    logits, deltas = predictor(features, boxes)
    assert logits.shape == (3, 3) and deltas.shape == (3, 4)
    if pooler_type == "PSRoIAlign":  # the vote is the mean of the pooled score bins
        maps = predictor.cls_score(predictor.conv_new(features[0]))
        pooled = ops.ps_roi_align(maps, [b.tensor for b in boxes], 3, 1 / 16, 2)
        torch.testing.assert_close(logits, pooled.mean(dim=(2, 3)))
    (logits.sum() + deltas.sum()).backward()
    assert predictor.cls_score.weight.grad.abs().sum() > 0


def test_rfcn_predictor_needs_a_position_sensitive_pooler() -> None:
    cfg = _box_cfg("FPN2MLPFeatureExtractor", "RFCNPredictor", POOLER_TYPE="ROIAlign")
    with pytest.raises(ValueError, match="position-sensitive pooler"):
        build_box_predictor(cfg, in_channels=6)


def test_registries_list_the_heads() -> None:
    assert {
        "FPN2MLPFeatureExtractor", "FPNXconv1fcFeatureExtractor",
        "ResNet50Conv5ROIFeatureExtractor", "VGG16FC67FeatureExtractor",
    } <= set(ROI_BOX_FEATURE_EXTRACTORS)  # fmt: skip
    assert {"FastRCNNPredictor", "FPNPredictor", "RFCNPredictor"} <= set(ROI_BOX_PREDICTORS)
    with pytest.raises(KeyError, match="Known names"):
        build_box_feature_extractor(_box_cfg("MLPHead"), 4)
