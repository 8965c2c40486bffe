"""Test-time augmentation (TEST.BBOX_AUG): the identity run alone is the model itself, flips are
undone exactly (the result on a mirrored image is the mirrored result), a run at the test size
adds only duplicates, and the config builds the wrapper."""

from __future__ import annotations

import pytest
import torch

from detector.config import load_config
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.test_time_augmentation import DetectorWithTTA, maybe_with_tta, vote_boxes
from detector.structures import Boxes, Instances

SHAPES = "configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml"


@pytest.fixture(scope="module")
def model() -> GeneralizedRCNN:
    """The shapes Mask R-CNN with random weights, its class logits scaled so that it detects."""
    cfg = load_config(SHAPES, ["MODEL.ROI_HEADS.SCORE_THRESH", "0.3"])
    torch.manual_seed(0)
    m = GeneralizedRCNN.from_config(cfg).eval()
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
    return m


def _image(seed: int = 0, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)


def _mirror(result: Instances) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = result.image_size[1]
    b = result.pred_boxes.tensor
    boxes = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)
    return boxes, result.scores, result.pred_classes


def _assert_same_set(a, b) -> None:
    """Two detection sets (boxes, scores, classes) equal up to order: every detection of one has
    a partner in the other with the same class, a box within 1e-3 px and a score within 1e-5
    (scores may tie, so sorting alone cannot pair them)."""
    (ab, as_, ac), (bb, bs, bc) = a, b
    assert len(ab) == len(bb)
    close = (ab[:, None] - bb[None]).abs().amax(-1) <= 1e-3  # (N, N)
    close &= (as_[:, None] - bs[None]).abs() <= 1e-5
    close &= ac[:, None] == bc[None]
    assert close.any(1).all() and close.any(0).all()


@torch.no_grad()
def test_identity_run_alone_equals_the_model(model):
    image = _image()
    (expected,) = model([image])
    (got,) = DetectorWithTTA(model).eval()([image])
    assert len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    torch.testing.assert_close(got.pred_masks, expected.pred_masks)


@torch.no_grad()
def test_flip_is_undone_exactly(model):
    """TTA with H_FLIP sees {I, flip(I)} for I and for flip(I): the two results mirror."""
    tta = DetectorWithTTA(model, h_flip=True).eval()
    image = _image(1)
    (result,) = tta([image])
    (mirrored,) = tta([image.flip(-1)])
    assert len(result) > 0 and len(result) == len(mirrored)
    own = (result.pred_boxes.tensor, result.scores, result.pred_classes)
    _assert_same_set(own, _mirror(mirrored))


@torch.no_grad()
def test_a_scale_equal_to_the_test_size_only_adds_duplicates(model):
    image = _image(3)
    (plain,) = model([image])
    (got,) = DetectorWithTTA(model, scales=[96], max_size=1000).eval()([image])
    torch.testing.assert_close(got.pred_boxes.tensor, plain.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, plain.scores)


@torch.no_grad()
def test_other_scales_map_back_to_the_test_size(model):
    image = _image(4)
    (got,) = DetectorWithTTA(model, scales=[64, 160], scale_h_flip=True).eval()([image])
    assert got.image_size == (96, 128)
    assert got.pred_masks.shape[0] == len(got)
    boxes = got.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()


def test_config_builds_the_wrapper(model):
    cfg = load_config(
        SHAPES,
        ["TEST.BBOX_AUG.ENABLED", "True", "TEST.BBOX_AUG.H_FLIP", "True",
         "TEST.BBOX_AUG.SCALES", "(64, 160)", "TEST.BBOX_AUG.SCALE_H_FLIP", "True",
         "TEST.BBOX_AUG.VOTE_IOU", "0.8"],
    )  # fmt: skip
    wrapped = maybe_with_tta(model, cfg)
    assert isinstance(wrapped, DetectorWithTTA) and wrapped.vote_iou == 0.8
    assert wrapped.runs == [
        (None, False),
        (None, True),
        (64, False),
        (64, True),
        (160, False),
        (160, True),
    ]
    assert maybe_with_tta(model, load_config(SHAPES)) is model


def test_box_voting_by_hand():
    """Class 1's kept box averages, weighted by score, the class-1 candidates with IoU >= 0.8
    (itself and a wider box, IoU 0.83), not a shifted one (IoU 0.68), nor class 2's or those
    under the score threshold; class 2's box is alone and stays."""
    zero = [0.0, 0.0, 0.0, 0.0]
    candidates = torch.tensor([  # (N, 4K) for K = 3: background, class 1, class 2
        zero + [0.0, 0.0, 10.0, 10.0] + [50.0, 50.0, 60.0, 60.0],
        zero + [0.0, 0.0, 12.0, 10.0] + [0.0, 0.0, 12.0, 10.0],
        zero + [1.0, 1.0, 11.0, 11.0] + zero,
        zero + [0.0, 0.0, 10.0, 14.0] + zero,
    ])  # fmt: skip
    scores = torch.tensor([[0.0, 0.9, 0.7], [0.0, 0.6, 0.01], [0.0, 0.3, 0.0], [0.0, 0.04, 0.0]])
    kept = Instances(
        (100, 100),
        pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])),
        scores=torch.tensor([0.9, 0.7]),
        pred_classes=torch.tensor([1, 2]),
    )
    voted = vote_boxes(kept, candidates, scores, iou=0.8, score_thresh=0.05)
    expected = torch.tensor([[0.0, 0.0, (0.9 * 10 + 0.6 * 12) / 1.5, 10.0], [50, 50, 60, 60]])
    torch.testing.assert_close(voted.pred_boxes.tensor, expected)
    torch.testing.assert_close(voted.scores, torch.tensor([0.9, 0.7]))


def test_keypoint_model_gets_the_keypoints_of_the_merged_boxes():
    """The keypoint head runs once, on the merged boxes and the test-size image's features."""
    cfg = load_config(
        "configs/shapes/keypoint_rcnn_R_18_FPN_shapes.yaml", ["MODEL.ROI_HEADS.SCORE_THRESH", "0.3"]
    )
    torch.manual_seed(0)
    model = GeneralizedRCNN.from_config(cfg).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
        image = _image()
        result = DetectorWithTTA(model, h_flip=True).eval()([image])[0]
        features = list(model.backbone(model.preprocess([image]).tensor).values())
        boxes_only = Instances(result.image_size, pred_boxes=result.pred_boxes)
        (expected,), _ = model.roi_heads.keypoint_head(features, [boxes_only])
    assert len(result) > 0 and result.pred_keypoints.shape == (len(result), 6, 3)
    torch.testing.assert_close(result.pred_keypoints, expected.pred_keypoints)
