"""Our R-50-FPN Faster/Mask R-CNN with converted torchvision weights equals torchvision's model.

The torchvision models are randomly initialized (weights=None, weights_backbone=None, a fixed
seed), their BatchNorms replaced by torchvision's FrozenBatchNorm2d with random statistics (as
its pretrained detectors are built), and converted with `convert_torchvision_detection` into
ours built from configs/torchvision/*.yaml. Random weights give confident but meaningless
detections; ROI_HEADS.SCORE_THRESH and torchvision's box_score_thresh are lowered alike.

Inputs: a real image is resized once as torchvision's GeneralizedRCNNTransform resizes
(bilinear `interpolate` with the scale min(min_size / short, max_size / long),
recompute_scale_factor=True), on the 0..255 float image. Our model gets that float image;
torchvision gets it divided by 255 with its transform's min_size set to the image's short side,
so it does not resize again (a scale of exactly 1), and returns results in the same pixels.
(torchvision normalizes before resizing; normalizing is affine per channel, so the order only
changes float rounding: resizing once for both keeps the two inputs bit-identical.)

Detections are compared as sets: boxes with equal scores may come out in another order
(torchvision re-sorts its per-class NMS result with an unstable sort).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from detector.config import load_config, unlocked
from detector.export.convert import convert_torchvision_detection
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.roi_heads.mask_head import paste_masks_in_image
from detector.structures import ImageList
from tests.conftest import SHARED_DATA

SCORE_THRESH = 0.02
COCO_IMAGES = "coco-val2017-sample6/images"


# --------------------------------------------------------------------------------------------
# Helpers (also used by tests/export)
# --------------------------------------------------------------------------------------------
def _freeze_with_random_statistics(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Replaces every BatchNorm2d inside `module` by torchvision's FrozenBatchNorm2d with random
    weight, bias, running mean and variance."""
    for name, child in module.named_children():
        if not isinstance(child, torch.nn.BatchNorm2d):
            _freeze_with_random_statistics(child, generator)
            continue
        n = child.num_features
        frozen = TorchvisionFrozenBN(n, eps=child.eps)
        frozen.weight.copy_(torch.rand(n, generator=generator) + 0.5)
        frozen.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        frozen.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
        frozen.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
        setattr(module, name, frozen)


def random_torchvision_detector(mask: bool, seed: int = 0) -> torch.nn.Module:
    """torchvision's (mask|faster)rcnn_resnet50_fpn with random weights, in eval mode."""
    torch.manual_seed(seed)
    builder = (
        torchvision.models.detection.maskrcnn_resnet50_fpn
        if mask
        else torchvision.models.detection.fasterrcnn_resnet50_fpn
    )
    model = builder(weights=None, weights_backbone=None, box_score_thresh=SCORE_THRESH)
    _freeze_with_random_statistics(model.backbone.body, torch.Generator().manual_seed(seed))
    return model.eval()


def converted_detector(torchvision_model: torch.nn.Module, mask: bool, opts: tuple[str, ...] = ()):
    """Ours from configs/torchvision/*.yaml with the converted weights, in eval mode."""
    name = "mask_rcnn_R_50_FPN" if mask else "faster_rcnn_R_50_FPN"
    cfg = load_config(f"configs/torchvision/{name}.yaml", list(opts))
    with unlocked(cfg):
        cfg.MODEL.ROI_HEADS.SCORE_THRESH = SCORE_THRESH
    model = GeneralizedRCNN.from_config(cfg)
    state, report = convert_torchvision_detection(torchvision_model.state_dict(), model)
    assert report.complete, report.summary()
    model.load_state_dict(state, strict=True)
    return model.eval()


def resize_like_torchvision(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> float (3, H', W') in 0..255, resized as GeneralizedRCNNTransform."""
    height, width = image.shape[-2:]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    resized = F.interpolate(
        image.float()[None],
        scale_factor=scale,
        mode="bilinear",
        recompute_scale_factor=True,
        align_corners=False,
    )
    return resized[0]


def run_torchvision_without_resize(model: torch.nn.Module, image: torch.Tensor) -> dict:
    """torchvision's detections on the 0..255 float `image`, which its transform keeps as is."""
    model.transform.min_size = (min(image.shape[-2:]),)
    model.transform.max_size = max(image.shape[-2:])
    with torch.no_grad():
        return model([image / 255.0])[0]


def match_detections(torchvision_out: dict, ours) -> torch.Tensor:
    """For each torchvision detection, the index of our detection with its label and nearest
    box; asserts the same count and a one-to-one matching."""
    assert len(ours) == len(torchvision_out["boxes"])
    distance = torch.cdist(torchvision_out["boxes"], ours.pred_boxes.tensor, p=float("inf"))
    other_label = torchvision_out["labels"][:, None] != ours.pred_classes[None, :]
    distance[other_label] = float("inf")
    index = distance.argmin(dim=1)
    assert index.unique().numel() == len(index), "two torchvision detections match one of ours"
    return index


def assert_same_detections(torchvision_out: dict, ours, tol: float = 1e-4) -> torch.Tensor:
    """Boxes (relative 1e-4), scores and labels equal up to order; returns the matching."""
    assert len(ours) > 0
    index = match_detections(torchvision_out, ours)
    torch.testing.assert_close(ours.pred_boxes.tensor[index], torchvision_out["boxes"], rtol=tol,
                               atol=tol)  # fmt: skip
    torch.testing.assert_close(ours.scores[index], torchvision_out["scores"], rtol=0, atol=tol)
    assert torch.equal(ours.pred_classes[index], torchvision_out["labels"])
    return index


def assert_same_masks(torchvision_out: dict, ours, index: torch.Tensor, tol: float = 1e-4):
    """torchvision's pasted probabilities (R, 1, H, W) vs ours: (R, 1, M, M) probabilities
    pasted here, or (R, H, W) bool pasted by the model (compared away from the 0.5 border)."""
    expected = torchvision_out["masks"][:, 0]
    masks = ours.pred_masks[index]
    if masks.dtype == torch.bool:
        undecided = (expected - 0.5).abs() <= tol
        assert torch.equal(masks[~undecided], (expected > 0.5)[~undecided])
        return
    image_size = tuple(expected.shape[-2:])
    boxes = ours.pred_boxes.tensor[index]
    pasted = paste_masks_in_image(masks[:, 0], boxes, image_size, threshold=None)
    torch.testing.assert_close(pasted, expected, rtol=0, atol=tol)


def _coco_image(shared_data: Path, name: str) -> torch.Tensor:
    """A COCO sample image, uint8 (3, H, W); skips the test when the shared data is absent."""
    path = shared_data / COCO_IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return torchvision.io.read_image(str(path))


# --------------------------------------------------------------------------------------------
# Fast checks on a small image: the same backbone features, RPN outputs, anchors, proposals
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faster_pair():
    torchvision_model = random_torchvision_detector(mask=False, seed=0)
    return torchvision_model, converted_detector(torchvision_model, mask=False)


@pytest.fixture(scope="module")
def small_image() -> torch.Tensor:
    # 224 x 298: padded to 224 x 320, P6 is 4 x 5 -> torchvision's P6 stride is 224 // 4 = 56
    return resize_like_torchvision(_coco_image(SHARED_DATA, "000000000089.jpg"), 224, 1333)


def _batch(model: GeneralizedRCNN, image: torch.Tensor) -> ImageList:
    return model.preprocess([image])


def test_backbone_features_are_equal(faster_pair, small_image):
    torchvision_model, ours = faster_pair
    images = _batch(ours, small_image)
    with torch.no_grad():
        expected = list(torchvision_model.backbone(images.tensor).values())
        features = list(ours.backbone(images.tensor).values())
    assert [f.shape for f in features] == [e.shape for e in expected]
    for feature, reference in zip(features, expected, strict=True):
        torch.testing.assert_close(feature, reference, rtol=1e-5, atol=1e-5)


def test_rpn_head_and_anchors_are_equal(faster_pair, small_image):
    torchvision_model, ours = faster_pair
    images = _batch(ours, small_image)
    with torch.no_grad():
        features = list(ours.backbone(images.tensor).values())
        logits, deltas = ours.rpn.head(features)
        expected_logits, expected_deltas = torchvision_model.rpn.head(features)
        tv_images = torchvision.models.detection.image_list.ImageList(
            images.tensor, images.image_sizes
        )
        expected_anchors = torchvision_model.rpn.anchor_generator(tv_images, features)[0]
    for ours_level, reference in zip(logits + deltas, expected_logits + expected_deltas,
                                     strict=True):  # fmt: skip
        torch.testing.assert_close(ours_level, reference, rtol=1e-5, atol=1e-5)
    input_size = tuple(images.tensor.shape[-2:])
    anchors = torch.cat(ours.rpn.anchor_generator(features, input_size))
    assert torch.equal(anchors, expected_anchors)
    # the P6 stride is 56 on the height here, not ANCHOR_STRIDE's 64
    assert torch.cat(ours.rpn.anchor_generator(features)).shape == anchors.shape
    assert not torch.equal(torch.cat(ours.rpn.anchor_generator(features)), anchors)


def test_proposals_are_equal(faster_pair, small_image):
    torchvision_model, ours = faster_pair
    captured = {}
    hooks = [
        torchvision_model.rpn.register_forward_hook(
            lambda module, inputs, outputs: captured.update(expected=outputs[0][0])
        ),
        ours.rpn.register_forward_hook(
            lambda module, inputs, outputs: captured.update(proposals=outputs[0][0])
        ),
    ]
    torchvision_out = run_torchvision_without_resize(torchvision_model, small_image)
    with torch.no_grad():
        detections = ours([small_image])[0]
    for hook in hooks:
        hook.remove()
    proposals = captured["proposals"].proposal_boxes.tensor
    expected = captured["expected"]
    assert proposals.shape == expected.shape
    # The same set: torchvision ranks by sigmoid(logit), ours by the logit, so logits whose
    # float32 sigmoids are equal (close to 1) may swap places.
    index = torch.cdist(expected, proposals, p=float("inf")).argmin(dim=1)
    assert index.unique().numel() == len(index)
    torch.testing.assert_close(proposals[index], expected, rtol=1e-4, atol=1e-4)
    assert_same_detections(torchvision_out, detections)


@pytest.mark.slow  # about 10 s on an idle 2-core machine
def test_mask_rcnn_small_image(small_image):
    torchvision_model = random_torchvision_detector(mask=True, seed=1)
    ours = converted_detector(torchvision_model, mask=True)  # POSTPROCESS_MASKS: bool masks
    torchvision_out = run_torchvision_without_resize(torchvision_model, small_image)
    with torch.no_grad():
        detections = ours([small_image])[0]
    index = assert_same_detections(torchvision_out, detections)
    assert detections.pred_masks.shape == (len(detections), *small_image.shape[-2:])
    assert_same_masks(torchvision_out, detections, index)


# --------------------------------------------------------------------------------------------
# The proof: real images at torchvision's 800 / 1333
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_faster_rcnn_800px_equals_torchvision(shared_data):
    image = _coco_image(shared_data, "000000000089.jpg")  # 480 x 640 -> 800 x 1066
    resized = resize_like_torchvision(image, 800, 1333)
    torchvision_model = random_torchvision_detector(mask=False, seed=0)
    ours = converted_detector(torchvision_model, mask=False)
    torchvision_out = run_torchvision_without_resize(torchvision_model, resized)
    with torch.no_grad():
        detections = ours([resized])[0]
    assert len(detections) == 100
    assert_same_detections(torchvision_out, detections)


@pytest.mark.slow
def test_mask_rcnn_800px_equals_torchvision(shared_data):
    image = _coco_image(shared_data, "000000404249.jpg")  # 640 x 427 -> 1199 x 800
    resized = resize_like_torchvision(image, 800, 1333)
    torchvision_model = random_torchvision_detector(mask=True, seed=1)
    opts = ("MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS", "False")
    ours = converted_detector(torchvision_model, mask=True, opts=opts)
    torchvision_out = run_torchvision_without_resize(torchvision_model, resized)
    with torch.no_grad():
        detections = ours([resized])[0]
    assert len(detections) > 0
    index = assert_same_detections(torchvision_out, detections)
    assert_same_masks(torchvision_out, detections, index)
