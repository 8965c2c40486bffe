"""RoIHeads: a training step (finite losses, an image without boxes) and an inference pass of
whole tiny detectors built by GeneralizedRCNN.from_config for each head style (R-18-FPN MLP head,
R-18-C4 res5 head, VGG-16 fc6/fc7 head, R-FCN with PSRoIAlign), and RoIHeads on its own."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVFastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign

from detector.config import get_cfg
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.roi_heads import RoIHeads, build_roi_heads
from detector.structures import Boxes, Instances

NUM_CLASSES = 4


def _small_rpn(cfg: Any) -> None:
    rpn = cfg.MODEL.RPN
    rpn.PRE_NMS_TOP_N_TRAIN = rpn.PRE_NMS_TOP_N_TEST = 200
    rpn.POST_NMS_TOP_N_TRAIN = rpn.POST_NMS_TOP_N_TEST = 50
    rpn.FPN_POST_NMS_TOP_N_TRAIN = rpn.FPN_POST_NMS_TOP_N_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH = 0.0  # an untrained head may score every class low
    cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES = NUM_CLASSES


def _narrow_resnet(cfg: Any) -> None:
    """ResNet-18 at a quarter of its width (res2 16 .. res5 128 channels)."""
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16


def fpn_cfg() -> Any:
    """Faster R-CNN R-18-FPN with the 2-fc MLP head (tiny widths)."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-FPN"
    cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 64
    cfg.MODEL.RPN.USE_FPN = True
    cfg.MODEL.RPN.ANCHOR_SIZES = [32.0, 64.0, 128.0, 256.0, 512.0]
    cfg.MODEL.RPN.ANCHOR_STRIDE = [4, 8, 16, 32, 64]
    cfg.MODEL.ROI_HEADS.USE_FPN = True
    box_head = cfg.MODEL.ROI_BOX_HEAD
    box_head.POOLER_TYPE = "ROIAlign"
    box_head.POOLER_RESOLUTION = 7
    box_head.POOLER_SCALES = [0.25, 0.125, 0.0625, 0.03125]
    box_head.POOLER_SAMPLING_RATIO = 2
    box_head.FEATURE_EXTRACTOR = "FPN2MLPFeatureExtractor"
    box_head.PREDICTOR = "FPNPredictor"
    box_head.MLP_HEAD_DIM = 32
    cfg.DATALOADER.SIZE_DIVISIBILITY = 32
    _small_rpn(cfg)
    _narrow_resnet(cfg)
    return cfg


def c4_cfg() -> Any:
    """Faster R-CNN R-18-C4: RoIAlign 14x14 on c4, res5 head, average pool, FastRCNNPredictor."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-C4"
    cfg.MODEL.RPN.ANCHOR_STRIDE = [16]
    box_head = cfg.MODEL.ROI_BOX_HEAD
    box_head.POOLER_TYPE = "ROIAlign"
    box_head.POOLER_RESOLUTION = 14
    box_head.POOLER_SCALES = [0.0625]
    box_head.POOLER_SAMPLING_RATIO = 0
    box_head.FEATURE_EXTRACTOR = "ResNet50Conv5ROIFeatureExtractor"
    box_head.PREDICTOR = "FastRCNNPredictor"
    _small_rpn(cfg)
    _narrow_resnet(cfg)
    return cfg


def vgg_cfg() -> Any:
    """Faster R-CNN VGG-16 (simple-faster-rcnn): RoIPool 7x7 on conv5_3, fc6/fc7, predictor."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "VGG-16"
    cfg.MODEL.RPN.ANCHOR_STRIDE = [16]
    box_head = cfg.MODEL.ROI_BOX_HEAD
    box_head.POOLER_TYPE = "ROIPool"
    box_head.POOLER_RESOLUTION = 7
    box_head.POOLER_SCALES = [0.0625]
    box_head.FEATURE_EXTRACTOR = "VGG16FC67FeatureExtractor"
    box_head.PREDICTOR = "FastRCNNPredictor"
    box_head.MLP_HEAD_DIM = 32  # 4096 for VGG-16's own fc6/fc7
    _small_rpn(cfg)
    return cfg


def rfcn_cfg() -> Any:
    """R-FCN on R-18-C4: position-sensitive score maps, PSRoIAlign, class-agnostic boxes."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-C4"
    cfg.MODEL.RPN.ANCHOR_STRIDE = [16]
    cfg.MODEL.ROI_HEADS.CLS_AGNOSTIC_BBOX_REG = True
    box_head = cfg.MODEL.ROI_BOX_HEAD
    box_head.POOLER_TYPE = "PSRoIAlign"
    box_head.POOLER_RESOLUTION = 3  # 7 in the paper
    box_head.POOLER_SCALES = [0.0625]
    box_head.POOLER_SAMPLING_RATIO = 2
    box_head.PREDICTOR = "RFCNPredictor"
    box_head.CONV_HEAD_DIM = 16  # 1024 in the paper
    _small_rpn(cfg)
    _narrow_resnet(cfg)
    return cfg


def _batch() -> tuple[list[torch.Tensor], list[Instances]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=generator) * 255,
              torch.rand(3, 48, 64, generator=generator) * 255]  # fmt: skip
    targets = [
        Instances((64, 64), gt_boxes=Boxes(torch.tensor([[4.0, 4, 30, 40], [20, 10, 60, 60]])),
                  gt_classes=torch.tensor([1, 3])),
        Instances((48, 64), gt_boxes=Boxes(torch.zeros(0, 4)),
                  gt_classes=torch.zeros(0, dtype=torch.int64)),
    ]  # fmt: skip
    return images, targets


@pytest.mark.parametrize("make_cfg", [fpn_cfg, c4_cfg, vgg_cfg, rfcn_cfg])
def test_detector_train_step_and_inference(make_cfg) -> None:
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(make_cfg()).train()
    images, targets = _batch()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), losses
    assert losses["loss_box_reg"] > 0  # the first image has foreground RoIs
    sum(losses.values()).backward()
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.weight.grad.abs().sum() > 0
    assert torch.isfinite(predictor.bbox_pred.weight.grad).all()

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for image, result in zip(images, detections, strict=True):
        height, width = image.shape[-2:]
        assert result.image_size == (height, width)
        assert 0 < len(result) <= 100
        boxes = result.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
        assert ((result.pred_classes >= 1) & (result.pred_classes < NUM_CLASSES)).all()
        assert (result.scores > 0).all()
        assert (result.scores[:-1] >= result.scores[1:]).all() or len(result) == 1


class _Backbone(torch.nn.Module):
    out_channels = 8


def _roi_heads(cfg: Any) -> RoIHeads:
    torch.manual_seed(0)
    return build_roi_heads(cfg, _Backbone())


def test_roi_heads_training_returns_sampled_rois_and_eval_detections() -> None:
    cfg = c4_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "R-18-C4"
    cfg.MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR = "FPN2MLPFeatureExtractor"
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM = 8
    heads = _roi_heads(cfg).train()
    assert heads.box_pooler is not None and heads.box_feature_extractor is not None
    features = [torch.randn(2, 8, 4, 4)]
    proposals = [
        Instances((64, 64), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 30, 30], [5, 5, 60, 50]]))),
        Instances((64, 64), proposal_boxes=Boxes(torch.zeros(0, 4))),
    ]
    _, targets = _batch()
    targets[1] = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[0.0, 0, 20, 20]])),
                           gt_classes=torch.tensor([2]))  # fmt: skip
    rois, losses = heads(features, proposals, [(64, 64), (64, 64)], targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert [len(r) for r in rois] == [4, 1]  # proposals + gt boxes, all within the batch
    assert rois[1].gt_classes.tolist() == [2]
    with pytest.raises(ValueError, match="targets"):
        heads(features, proposals, [(64, 64), (64, 64)])
    heads.eval()
    detections, losses = heads(features, proposals, [(64, 64), (64, 64)])
    assert losses == {} and len(detections[1]) == 0 and len(detections[0]) > 0


def test_rfcn_has_no_pooler_or_extractor_and_mismatches_are_errors() -> None:
    heads = _roi_heads(rfcn_cfg())
    assert heads.box_pooler is None and heads.box_feature_extractor is None
    cfg = fpn_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "PSRoIAlign"
    with pytest.raises(ValueError, match="needs PREDICTOR RFCNPredictor"):
        _roi_heads(cfg)
    cfg = rfcn_cfg()
    cfg.MODEL.MASK_ON = True
    with pytest.raises(ValueError, match="no mask head"):
        _roi_heads(cfg)


def test_roi_heads_under_cpu_autocast_with_bfloat16_features() -> None:
    cfg = fpn_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ModulatedDeformRoIPool"
    heads = _roi_heads(cfg).train()
    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 8, 64 // s, 64 // s, generator=generator).to(torch.bfloat16)
                for s in (4, 8, 16, 32, 64)]  # fmt: skip
    boxes = torch.tensor([[0.0, 0, 30, 30], [5, 5, 60, 50], [10, 20, 40, 62]])
    proposals = [Instances((64, 64), proposal_boxes=Boxes(boxes))] * 2
    _, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = heads(features, proposals, [(64, 64), (48, 64)], targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    heads.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections, _ = heads(features, proposals, [(64, 64), (48, 64)])
    assert detections[0].pred_boxes.tensor.dtype == torch.float32 and len(detections[0]) > 0


def _torchvision_pair(score_thresh: float = 0.05) -> tuple[RoIHeads, TVRoIHeads]:
    """Our FPN RoI heads and torchvision's with the same weights (fc6, fc7, cls_score,
    bbox_pred have the same names), every labelled RoI fitting the sampling batch."""
    cfg = fpn_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 1000
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.5
    cfg.MODEL.ROI_HEADS.SCORE_THRESH = score_thresh
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 1 / 9  # torchvision's fixed beta
    ours = _roi_heads(cfg)
    with torch.no_grad():  # bigger weights than the init so the boxes move and classes differ
        for parameter in ours.box_predictor.parameters():
            parameter.normal_(0.0, 0.3)
    tv = TVRoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        TwoMLPHead(8 * 49, 32),
        TVFastRCNNPredictor(32, NUM_CLASSES),
        0.5, 0.5, 1000, 0.5, None, score_thresh, 0.5, 100,
    )  # fmt: skip
    tv.box_head.load_state_dict(ours.box_feature_extractor.state_dict())
    tv.box_predictor.load_state_dict(ours.box_predictor.state_dict())
    return ours, tv


def _random_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor], list[Instances]]:
    generator = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 8, 256 // s, 256 // s, generator=generator)
                for s in (4, 8, 16, 32, 64)]  # fmt: skip
    proposals = []
    for _ in range(2):
        xy = torch.rand(40, 2, generator=generator) * 200
        proposals.append(torch.cat([xy, xy + torch.rand(40, 2, generator=generator) * 150 + 4], 1))
    gt_boxes = [torch.tensor([[10.0, 10, 120, 90], [100, 80, 250, 240]]),
                torch.tensor([[30.0, 40, 200, 160]])]  # fmt: skip
    targets = [
        Instances((256, 256), gt_boxes=Boxes(boxes), gt_classes=torch.tensor(classes))
        for boxes, classes in zip(gt_boxes, ([1, 3], [2]), strict=True)
    ]
    return features, proposals, targets


def _as_instances(proposals: list[torch.Tensor], image_sizes) -> list[Instances]:
    return [
        Instances(size, proposal_boxes=Boxes(boxes))
        for size, boxes in zip(image_sizes, proposals, strict=True)
    ]


def test_inference_matches_torchvision_roi_heads() -> None:
    ours, tv = _torchvision_pair()
    ours.eval(), tv.eval()
    features, proposals, _ = _random_inputs()
    image_sizes = [(256, 256), (200, 256)]
    with torch.no_grad():
        detections, _ = ours(features, _as_instances(proposals, image_sizes), image_sizes)
        named = OrderedDict((str(i), f) for i, f in enumerate(features[:4]))
        expected, _ = tv(named, proposals, image_sizes)
    for result, tv_result in zip(detections, expected, strict=True):
        assert len(result) > 5
        assert torch.equal(result.pred_classes, tv_result["labels"])
        torch.testing.assert_close(result.pred_boxes.tensor, tv_result["boxes"])
        torch.testing.assert_close(result.scores, tv_result["scores"])


def test_training_losses_match_torchvision_roi_heads() -> None:
    ours, tv = _torchvision_pair()
    ours.train(), tv.train()
    features, proposals, targets = _random_inputs()
    image_sizes = [(256, 256), (256, 256)]
    rois, losses = ours(features, _as_instances(proposals, image_sizes), image_sizes, targets)
    named = OrderedDict((str(i), f) for i, f in enumerate(features[:4]))
    tv_targets = [{"boxes": t.gt_boxes.tensor, "labels": t.gt_classes} for t in targets]
    _, tv_losses = tv(named, proposals, image_sizes, tv_targets)
    assert sum(int((r.gt_classes > 0).sum()) for r in rois) > 4
    torch.testing.assert_close(losses["loss_classifier"], tv_losses["loss_classifier"])
    torch.testing.assert_close(losses["loss_box_reg"], tv_losses["loss_box_reg"])


class _RecordingMaskHead(torch.nn.Module):
    """Stands in for the mask head: records its inputs, returns them with a loss."""

    def forward(self, features, instances, targets=None, box_features=None):
        self.seen = (instances, targets, box_features)
        losses = {"loss_mask": box_features.sum() * 0.0} if self.training else {}
        return instances, losses


def test_mask_hook_gets_sampled_rois_with_box_features_and_detections() -> None:
    built = _roi_heads(fpn_cfg())
    mask_head = _RecordingMaskHead()
    heads = RoIHeads(
        target_creator=built.target_creator,
        box_pooler=built.box_pooler,
        box_feature_extractor=built.box_feature_extractor,
        box_predictor=built.box_predictor,
        post_processor=built.post_processor,
        mask_head=mask_head,
    ).train()
    features, proposals, targets = _random_inputs()
    image_sizes = [(256, 256), (256, 256)]
    rois, losses = heads(features, _as_instances(proposals, image_sizes), image_sizes, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    seen_rois, seen_targets, box_features = mask_head.seen
    assert seen_rois is rois and seen_targets is targets
    assert box_features.shape == (sum(len(r) for r in rois), 32)  # every sampled RoI, in order
    pooled = built.box_pooler(features, [r.proposal_boxes for r in rois])
    torch.testing.assert_close(box_features, built.box_feature_extractor(pooled))
    heads.eval()
    with torch.no_grad():
        detections, losses = heads(features, _as_instances(proposals, image_sizes), image_sizes)
    assert losses == {} and mask_head.seen[0] is detections and mask_head.seen[2] is None
    assert detections[0].has("pred_boxes")
