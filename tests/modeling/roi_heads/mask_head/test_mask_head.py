"""MaskHead with a stand-in pooler: FPN and C4 (own and shared res5) training and inference, and
build_mask_head from configs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from detector.config import get_cfg, merge_opts
from detector.modeling.backbone.resnet import ResNetHead
from detector.modeling.postprocessing import detector_postprocess
from detector.modeling.roi_heads.mask_head import (
    MaskHead,
    MaskRCNNC4FeatureExtractor,
    MaskRCNNC4Predictor,
    MaskRCNNFPNFeatureExtractor,
    build_mask_head,
    mask_probabilities,
)
from detector.ops import multi_scale_roi_align, paste_masks_in_image, roi_align
from detector.structures import Boxes, Instances, PolygonMasks

IMAGE_SIZE = (64, 64)


class StandInPooler(nn.Module):
    """RoI Align (aligned, 2 samples per bin) over one level, or over two levels where boxes of
    at least 32 x 32 pixels go to the second one. Counts its calls."""

    def __init__(self, scales: list[float], resolution: int) -> None:
        super().__init__()
        self.scales = list(scales)
        self.resolution = resolution
        self.calls = 0

    def forward(self, features: list[Tensor], boxes: list[Boxes]) -> Tensor:
        self.calls += 1
        rois = torch.cat(
            [
                torch.cat([torch.full((len(b), 1), float(i)), b.tensor], 1)
                for i, b in enumerate(boxes)
            ]
        )  # (R, 5)
        if len(self.scales) == 1:
            return roi_align(features[0], rois, self.resolution, self.scales[0], 2, aligned=True)
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        levels = (area >= 32 * 32).to(torch.int64)
        return multi_scale_roi_align(
            features, rois, levels, self.resolution, self.scales, 2, aligned=True
        )


def targets() -> list[Instances]:
    """Image 0: a square (class 1) and a rectangle (class 3); image 1: one square (class 2)."""
    square = [[8.0, 8.0, 40.0, 8.0, 40.0, 40.0, 8.0, 40.0]]
    rect = [[30.0, 20.0, 60.0, 20.0, 60.0, 50.0, 30.0, 50.0]]
    return [
        Instances(
            IMAGE_SIZE, gt_classes=torch.tensor([1, 3]), gt_masks=PolygonMasks([square, rect])
        ),
        Instances(IMAGE_SIZE, gt_classes=torch.tensor([2]), gt_masks=PolygonMasks([rect])),
    ]


def sampled_rois(foreground: bool = True) -> list[Instances]:
    """Image 0: fg, bg, fg RoIs (matched to gt 1 and 0); image 1: a bg RoI, and a fg one."""
    boxes0 = torch.tensor(
        [[28.0, 18.0, 62.0, 52.0], [0.0, 0.0, 10.0, 10.0], [6.0, 9.0, 30.0, 41.0]]
    )
    boxes1 = torch.tensor([[40.0, 40.0, 50.0, 60.0], [31.0, 22.0, 58.0, 49.0]])
    classes0 = torch.tensor([3, 0, 1]) if foreground else torch.zeros(3, dtype=torch.int64)
    classes1 = torch.tensor([0, 2]) if foreground else torch.zeros(2, dtype=torch.int64)
    return [
        Instances(
            IMAGE_SIZE,
            proposal_boxes=Boxes(boxes0),
            gt_classes=classes0,
            matched_gt_idx=torch.tensor([1, 0, 0]),
        ),
        Instances(
            IMAGE_SIZE,
            proposal_boxes=Boxes(boxes1),
            gt_classes=classes1,
            matched_gt_idx=torch.tensor([0, 0]),
        ),
    ]


def fpn_head(**kwargs) -> MaskHead:
    torch.manual_seed(0)
    return MaskHead(
        pooler=StandInPooler([1 / 4, 1 / 8], 14),
        feature_extractor=MaskRCNNFPNFeatureExtractor(8, conv_layers=[8, 8]),
        predictor=MaskRCNNC4Predictor(8, dim_reduced=8, num_classes=4),
        mask_size=28,
        **kwargs,
    )


def c4_head(**kwargs) -> MaskHead:
    torch.manual_seed(0)
    res5 = ResNetHead(depth=18, width_per_group=8)  # 32 -> 64 channels, stride 2
    return MaskHead(
        pooler=StandInPooler([1 / 16], 14),
        feature_extractor=MaskRCNNC4FeatureExtractor(res5, out_channels=64, stride=2),
        predictor=MaskRCNNC4Predictor(64, dim_reduced=16, num_classes=4),
        mask_size=14,
        **kwargs,
    )


def fpn_features() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [
        torch.randn(2, 8, 16, 16, generator=generator),
        torch.randn(2, 8, 8, 8, generator=generator),
    ]


def c4_features() -> list[Tensor]:
    return [torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(2))]


def direct_loss(
    head: MaskHead, features: list[Tensor], mask_features: Tensor | None = None
) -> Tensor:
    """L_mask written out for `sampled_rois()`: positives image 0 RoIs 0 and 2, image 1 RoI 1."""
    rois = sampled_rois()
    positive_boxes = [rois[0].proposal_boxes[[0, 2]], rois[1].proposal_boxes[[1]]]
    if mask_features is None:
        mask_features = head.feature_extractor(head.pooler(features, positive_boxes))
    logits = head.predictor(mask_features)
    gt = targets()
    size = head.mask_size
    mask_targets = torch.cat(
        [
            gt[0].gt_masks[[1, 0]].crop_and_resize(positive_boxes[0], size),
            gt[1].gt_masks[[0]].crop_and_resize(positive_boxes[1], size),
        ]
    )
    class_logits = torch.stack([logits[0, 3], logits[1, 1], logits[2, 2]])
    return nn.functional.binary_cross_entropy_with_logits(class_logits, mask_targets)


@pytest.mark.parametrize(
    "make_head,make_features", [(fpn_head, fpn_features), (c4_head, c4_features)]
)
def test_training_loss_and_backward(make_head, make_features):
    head, features = make_head().train(), make_features()
    rois = sampled_rois()
    returned, losses = head(features, rois, targets())
    assert returned is rois and set(losses) == {"loss_mask"}
    torch.testing.assert_close(losses["loss_mask"], direct_loss(head, features))
    losses["loss_mask"].backward()
    for name, parameter in head.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "make_head,make_features", [(fpn_head, fpn_features), (c4_head, c4_features)]
)
def test_no_positive_roi_gives_zero_loss_with_gradients(make_head, make_features):
    head, features = make_head().train(), make_features()
    _, losses = head(features, sampled_rois(foreground=False), targets())
    assert losses["loss_mask"].item() == 0.0
    losses["loss_mask"].backward()
    for name, parameter in head.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.equal(parameter.grad, torch.zeros_like(parameter)), name


def test_group_norm_head_with_no_positive_roi():
    head = fpn_head()
    head.feature_extractor = MaskRCNNFPNFeatureExtractor(
        8, conv_layers=[8, 8], use_gn=True, gn_num_groups=4
    )
    _, losses = head.train()(fpn_features(), sampled_rois(foreground=False), targets())
    losses["loss_mask"].backward()
    assert head.feature_extractor.mask_fcn1[1].weight.grad is not None


def test_shared_c4_features_in_training():
    head = c4_head(share_box_features=True).train()
    generator = torch.Generator().manual_seed(3)
    box_features = torch.randn(5, 64, 7, 7, generator=generator, requires_grad=True)  # 3 + 2 RoIs
    _, losses = head(c4_features(), sampled_rois(), targets(), box_features=box_features)
    assert head.pooler.calls == 0  # the box head's features were used
    positive_rows = box_features[[0, 2, 4]]
    torch.testing.assert_close(losses["loss_mask"], direct_loss(head, [], positive_rows))
    losses["loss_mask"].backward()
    rows_with_grad = box_features.grad.flatten(1).abs().sum(1) > 0
    assert rows_with_grad.tolist() == [True, False, True, False, True]
    with pytest.raises(ValueError, match="box_features must be"):
        head(c4_features(), sampled_rois(), targets(), box_features=box_features[:4])


def test_training_needs_targets():
    with pytest.raises(ValueError, match="needs `targets`"):
        fpn_head().train()(fpn_features(), sampled_rois())


def detections() -> list[Instances]:
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 63.0, 60.0], [1.0, 2.0, 5.0, 4.0]])
    return [
        Instances(
            IMAGE_SIZE,
            pred_boxes=Boxes(boxes),
            scores=torch.tensor([0.9, 0.8, 0.3]),
            pred_classes=torch.tensor([2, 1, 3]),
        ),
        Instances(
            (48, 40),
            pred_boxes=Boxes(torch.zeros(0, 4)),
            scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.int64),
        ),
    ]


def test_inference_probabilities_of_the_predicted_class():
    head, features = fpn_head().eval(), fpn_features()
    with torch.no_grad():
        results, losses = head(features, detections())
        logits = head.predictor(
            head.feature_extractor(
                head.pooler(features, [detections()[0].pred_boxes, Boxes(torch.zeros(0, 4))])
            )
        )
    assert losses == {}
    assert results[0].pred_masks.shape == (3, 1, 28, 28)
    expected = torch.stack([logits[0, 2], logits[1, 1], logits[2, 3]]).sigmoid()[:, None]
    torch.testing.assert_close(results[0].pred_masks, expected)
    torch.testing.assert_close(results[0].scores, detections()[0].scores)
    assert results[1].pred_masks.shape == (0, 1, 28, 28) and results[1].image_size == (48, 40)


def test_mask_probabilities():
    logits = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(4))
    probabilities = mask_probabilities(logits, torch.tensor([3, 0, 2]))
    torch.testing.assert_close(probabilities, logits[[0, 1, 2], [3, 0, 2]][:, None].sigmoid())
    agnostic = mask_probabilities(logits[:, :1], torch.tensor([3, 0, 2]))  # one mask per RoI
    torch.testing.assert_close(agnostic, logits[:, :1].sigmoid())


def test_detector_postprocess_pastes_the_probabilities():
    head, features = fpn_head().eval(), fpn_features()
    with torch.no_grad():
        results, _ = head(features, detections())
    pasted = [detector_postprocess(r, *IMAGE_SIZE, mask_threshold=0.4) for r in results]
    boxes = detections()[0].pred_boxes.clip(IMAGE_SIZE).tensor
    expected = paste_masks_in_image(results[0].pred_masks[:, 0], boxes, IMAGE_SIZE, 0.4)
    assert pasted[0].pred_masks.dtype == torch.bool
    assert torch.equal(pasted[0].pred_masks, expected)
    assert pasted[1].pred_masks.shape == (0, *IMAGE_SIZE)


def test_inference_without_detections_skips_the_pooler():
    head = c4_head().eval()
    empty = [detections()[1], detections()[1]]
    results, _ = head(c4_features(), empty)
    assert head.pooler.calls == 0
    assert [r.pred_masks.shape for r in results] == [(0, 1, 14, 14)] * 2


def test_c4_inference_uses_the_res5_head():
    head = c4_head(share_box_features=True).eval()
    results, _ = head(c4_features(), detections())
    assert head.pooler.calls == 1 and results[0].pred_masks.shape == (3, 1, 14, 14)
    assert ((results[0].pred_masks > 0) & (results[0].pred_masks < 1)).all()


# ------------------------------------------------------------------------------------------------
# build_mask_head
# ------------------------------------------------------------------------------------------------
FPN_OPTS = [
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR", "MaskRCNNFPNFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES", "[0.25, 0.125, 0.0625, 0.03125]",
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False",
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR", "FPN2MLPFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.RESOLUTION", "28",
]  # fmt: skip


def test_build_fpn_head():
    head = build_mask_head(merge_opts(get_cfg(), FPN_OPTS), 256, None)
    extractor = head.feature_extractor
    assert isinstance(extractor, MaskRCNNFPNFeatureExtractor)
    assert extractor.layer_names == ["mask_fcn1", "mask_fcn2", "mask_fcn3", "mask_fcn4"]
    assert head.predictor.mask_fcn_logits.out_channels == 81 and head.mask_size == 28
    assert not head.share_box_features and head.pooler.scales == [0.25, 0.125, 0.0625, 0.03125]
    # maskrcnn_benchmark's init: kaiming normal with fan_out, zero bias.
    conv = extractor.mask_fcn2
    torch.testing.assert_close(conv.weight.std().item(), (2 / (256 * 9)) ** 0.5, rtol=0.03, atol=0)
    assert torch.equal(conv.bias, torch.zeros(256))
    logits = head.predictor.mask_fcn_logits
    torch.testing.assert_close(logits.weight.std().item(), (2 / 81) ** 0.5, rtol=0.03, atol=0)


def test_build_fpn_head_options():
    opts = FPN_OPTS + ["MODEL.ROI_MASK_HEAD.USE_GN", "True", "MODEL.ROI_MASK_HEAD.DILATION", "2"]
    opts += ["MODEL.ROI_MASK_HEAD.CONV_LAYERS", "[64, 32]", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "5"]
    head = build_mask_head(merge_opts(get_cfg(), opts), 16, None)
    conv, norm = head.feature_extractor.mask_fcn1
    assert conv.dilation == (2, 2) and conv.padding == (2, 2) and conv.bias is None
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 32
    assert head.feature_extractor.mask_fcn2[0].out_channels == 32
    assert head.predictor.conv5_mask.out_channels == 32
    assert head.predictor.mask_fcn_logits.out_channels == 5
    x = torch.randn(3, 16, 14, 14)
    assert head.predictor(head.feature_extractor(x)).shape == (3, 5, 28, 28)


def test_build_checks_the_resolution():
    cfg = merge_opts(get_cfg(), FPN_OPTS + ["MODEL.ROI_MASK_HEAD.RESOLUTION", "14"])
    with pytest.raises(ValueError, match="set MODEL.ROI_MASK_HEAD.RESOLUTION 28"):
        build_mask_head(cfg, 256, None)
    cfg = merge_opts(get_cfg(), ["MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR", "NoSuchExtractor"])
    cfg = merge_opts(cfg, ["MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False"])
    with pytest.raises(KeyError, match="MaskRCNNFPNFeatureExtractor"):
        build_mask_head(cfg, 256, None)


C4_OPTS = ["MODEL.BACKBONE.CONV_BODY", "R-18-C4", "MODEL.ROI_MASK_HEAD.RESOLUTION", "14"]


class BoxC4Extractor(nn.Module):
    """A stand-in for the box head's ResNet50Conv5ROIFeatureExtractor: res5 as `head`."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.out_channels = head.out_channels


def test_build_shared_c4_head():
    from detector.modeling.backbone.resnet import build_res5_head

    cfg = merge_opts(get_cfg(), C4_OPTS)
    box_extractor = BoxC4Extractor(build_res5_head(cfg))
    head = build_mask_head(cfg, 256, box_extractor)
    assert head.share_box_features and head.mask_size == 14
    assert head.feature_extractor.head is box_extractor.head
    assert head.predictor.conv5_mask.in_channels == 512
    with pytest.raises(ValueError, match="needs the box feature extractor"):
        build_mask_head(cfg, 256, None)
    # RESOLUTION 28 does not fit a C4 head (14 -> res5 -> 7 -> deconv -> 14); the default does.
    too_fine = merge_opts(get_cfg(), [*C4_OPTS[:2], "MODEL.ROI_MASK_HEAD.RESOLUTION", "28"])
    with pytest.raises(ValueError, match="set MODEL.ROI_MASK_HEAD.RESOLUTION 14"):
        build_mask_head(too_fine, 256, box_extractor)
    assert build_mask_head(merge_opts(get_cfg(), C4_OPTS[:2]), 256, box_extractor).mask_size == 14
    mismatched = merge_opts(cfg, ["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7"])
    with pytest.raises(ValueError, match="POOLER_RESOLUTION"):
        build_mask_head(mismatched, 256, box_extractor)


def test_build_own_c4_head():
    cfg = merge_opts(
        get_cfg(), C4_OPTS + ["MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False"]
    )
    head = build_mask_head(cfg, 256, BoxC4Extractor(ResNetHead(depth=18)))
    assert not head.share_box_features
    assert isinstance(head.feature_extractor.head, ResNetHead)
    assert head.feature_extractor.out_channels == 512
    with pytest.raises(ValueError, match="takes 256 channels but the features have 1024"):
        build_mask_head(cfg, 1024, None)
    dilated = merge_opts(
        cfg, ["MODEL.RESNETS.RES5_DILATION", "2", "MODEL.ROI_MASK_HEAD.RESOLUTION", "28"]
    )
    head = build_mask_head(dilated, 256, None)
    assert head.mask_size == 28
