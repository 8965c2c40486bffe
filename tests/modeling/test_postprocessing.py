"""detector_postprocess: detections mapped from the network input to the original image."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

from detector.modeling.postprocessing import detector_postprocess
from detector.structures import Boxes, Instances


# --------------------------------------------------------------------------------------------
# detector_postprocess
# --------------------------------------------------------------------------------------------
def test_boxes_are_scaled_and_clipped():
    # Input image 50 x 100 (h, w) -> original 100 x 300: x * 3, y * 2.
    result = Instances(
        (50, 100),
        pred_boxes=Boxes(torch.tensor([[10.0, 5.0, 40.0, 25.0], [90.0, 40.0, 105.0, 60.0]])),
        scores=torch.tensor([0.9, 0.4]),
        pred_classes=torch.tensor([2, 1]),
    )
    out = detector_postprocess(result, 100, 300)
    assert out.image_size == (100, 300)
    expected = torch.tensor([[30.0, 10.0, 120.0, 50.0], [270.0, 80.0, 300.0, 100.0]])
    torch.testing.assert_close(out.pred_boxes.tensor, expected)
    assert out.scores.tolist() == pytest.approx([0.9, 0.4])
    assert out.pred_classes.tolist() == [2, 1]
    assert out.pred_masks is None
    # The input is left as it was.
    assert result.image_size == (50, 100) and result.pred_boxes.tensor[0, 0] == 10.0


def test_mask_probabilities_are_pasted_at_the_original_size():
    torch.manual_seed(0)
    probs = torch.rand(3, 1, 8, 8)  # (R, 1, M, M)
    result = Instances(
        (40, 60),
        pred_boxes=Boxes(torch.tensor([[4.0, 2.0, 30.0, 20.0], [0.0, 0.0, 60.0, 40.0],
                                       [50.0, 30.0, 59.0, 39.0]])),
        scores=torch.ones(3),
        pred_classes=torch.ones(3, dtype=torch.int64),
        pred_masks=probs,
    )  # fmt: skip
    out = detector_postprocess(result, 80, 90)  # x * 1.5, y * 2
    assert out.pred_masks.shape == (3, 80, 90) and out.pred_masks.dtype == torch.bool
    boxes = torch.tensor([[6.0, 4.0, 45.0, 40.0], [0.0, 0.0, 90.0, 80.0], [75.0, 60.0, 88.5, 78.0]])
    torch.testing.assert_close(out.pred_boxes.tensor, boxes)
    # torchvision's paste at the original size, cut at 0.5, is the oracle.
    expected = tv_paste(probs, boxes, (80, 90))[:, 0] > 0.5  # (R, 1, H, W) -> (R, H, W)
    assert torch.equal(out.pred_masks, expected)


def test_constant_mask_fills_its_scaled_box():
    result = Instances(
        (10, 10),
        pred_boxes=Boxes(torch.tensor([[2.0, 3.0, 6.0, 8.0]])),
        scores=torch.ones(1),
        pred_classes=torch.ones(1, dtype=torch.int64),
        pred_masks=torch.ones(1, 1, 28, 28),
    )
    out = detector_postprocess(result, 20, 40)  # box -> (8, 6, 24, 16)
    mask = out.pred_masks[0]
    assert mask[7:15, 9:23].all()  # the box's inside
    assert not mask[:5].any() and not mask[18:].any()
    assert not mask[:, :7].any() and not mask[:, 26:].any()


def test_masks_must_be_probabilities():
    result = Instances(
        (2, 4),
        pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 1.0]])),
        pred_masks=torch.zeros(1, 2, 4, dtype=torch.bool),  # pasted: not a mask head output
    )
    with pytest.raises(ValueError, match=r"\(R, 1, M, M\) probabilities, got \(1, 2, 4\)"):
        detector_postprocess(result, 4, 8)


def test_empty_detections_and_proposals():
    empty = Instances(
        (30, 40),
        pred_boxes=Boxes(torch.zeros(0, 4)),
        scores=torch.zeros(0),
        pred_classes=torch.zeros(0, dtype=torch.int64),
        pred_masks=torch.zeros(0, 1, 28, 28),
    )
    out = detector_postprocess(empty, 60, 80)
    assert len(out) == 0 and out.pred_masks.shape == (0, 60, 80)
    proposals = Instances(
        (30, 40),
        proposal_boxes=Boxes(torch.tensor([[4.0, 3.0, 8.0, 6.0]])),
        objectness_logits=torch.tensor([1.5]),
    )
    out = detector_postprocess(proposals, 60, 80)
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([[8.0, 6.0, 16.0, 12.0]]))
    assert out.objectness_logits.tolist() == [1.5] and out.pred_boxes is None
