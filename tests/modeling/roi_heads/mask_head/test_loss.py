"""Mask targets on hand-made polygon and bitmap cases; L_mask against a direct BCE."""

from __future__ import annotations

import pytest
import torch

from detector.modeling.roi_heads.mask_head import mask_rcnn_loss, mask_rcnn_targets
from detector.structures import BitMasks, Boxes, Instances, PolygonMasks

SQUARE = [2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]  # the square [2, 6] x [2, 6]
RECT = [10.0, 0.0, 20.0, 0.0, 20.0, 5.0, 10.0, 5.0]  # [10, 20] x [0, 5]

# Square in box (0, 0, 8, 8) at M = 4: each target pixel is 2x2 image pixels.
CENTER_2X2 = torch.tensor(
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32
)


def square_and_rect_bitmasks() -> BitMasks:
    bitmaps = torch.zeros(2, 12, 24, dtype=torch.bool)
    bitmaps[0, 2:6, 2:6] = True
    bitmaps[1, 0:5, 10:20] = True
    return BitMasks(bitmaps)


def rois(boxes: list[list[float]], classes: list[int], matched: list[int]) -> Instances:
    return Instances(
        (12, 24),
        proposal_boxes=Boxes(torch.tensor(boxes)),
        gt_classes=torch.tensor(classes),
        matched_gt_idx=torch.tensor(matched),
    )


@pytest.mark.parametrize("kind", ["polygons", "bitmasks"])
def test_targets_of_a_square(kind: str):
    gt_masks = (
        PolygonMasks([[SQUARE], [RECT]]) if kind == "polygons" else square_and_rect_bitmasks()
    )
    targets = Instances((12, 24), gt_classes=torch.tensor([3, 5]), gt_masks=gt_masks)
    positives = rois(
        [[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0], [4.0, 2.0, 8.0, 6.0], [10.0, 0.0, 15.0, 5.0]],
        classes=[3, 3, 3, 5],
        matched=[0, 0, 0, 1],
    )
    mask_targets, classes = mask_rcnn_targets([positives], [targets], 4)
    assert mask_targets.shape == (4, 4, 4) and mask_targets.dtype == torch.float32
    torch.testing.assert_close(mask_targets[0], CENTER_2X2)
    torch.testing.assert_close(mask_targets[1], torch.ones(4, 4))  # the box is the square
    left_half = torch.zeros(4, 4)
    left_half[:, :2] = 1  # box (4, 2, 8, 6): the square covers its left half
    torch.testing.assert_close(mask_targets[2], left_half)
    torch.testing.assert_close(mask_targets[3], torch.ones(4, 4))  # inside the rectangle
    assert classes.tolist() == [3, 3, 3, 5]


def test_targets_follow_matched_gt_idx_per_image():
    targets = [
        Instances(
            (12, 24), gt_classes=torch.tensor([1, 2]), gt_masks=PolygonMasks([[RECT], [SQUARE]])
        ),
        Instances((12, 24), gt_classes=torch.tensor([4]), gt_masks=square_and_rect_bitmasks()[:1]),
    ]
    positives = [
        rois([[0.0, 0.0, 8.0, 8.0], [10.0, 0.0, 20.0, 5.0]], classes=[2, 1], matched=[1, 0]),
        rois([[0.0, 0.0, 8.0, 8.0]], classes=[4], matched=[0]),
    ]
    mask_targets, classes = mask_rcnn_targets(positives, targets, 4)
    torch.testing.assert_close(
        mask_targets, torch.stack([CENTER_2X2, torch.ones(4, 4), CENTER_2X2])
    )
    assert classes.tolist() == [2, 1, 4]


def test_targets_errors():
    targets = [Instances((12, 24), gt_classes=torch.tensor([1]))]
    with pytest.raises(ValueError, match=r"targets\[0\] has no gt_masks"):
        mask_rcnn_targets([rois([[0.0, 0, 4, 4]], [1], [0])], targets, 4)
    targets = [Instances((12, 24), gt_classes=torch.tensor([1]), gt_masks=PolygonMasks([[SQUARE]]))]
    with pytest.raises(IndexError, match="matched_gt_idx points outside the 1"):
        mask_rcnn_targets([rois([[0.0, 0, 4, 4]], [1], [1])], targets, 4)


def direct_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))."""
    probabilities = logits.double().sigmoid()
    t = targets.double()
    return -(t * probabilities.log() + (1 - t) * (1 - probabilities).log()).mean()


def test_loss_equals_direct_bce_on_the_class_channel():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 6, 6, generator=generator, requires_grad=True)
    classes = torch.tensor([1, 3, 2, 3, 1])
    targets = (torch.rand(5, 6, 6, generator=generator) > 0.5).float()
    loss = mask_rcnn_loss(logits, classes, targets)
    expected = direct_bce(
        torch.stack([logits[i, c] for i, c in enumerate(classes.tolist())]), targets
    )
    torch.testing.assert_close(loss, expected.float())  # float32 loss: float32 tolerance
    loss.backward()
    # Only the ground-truth class channels get a gradient.
    touched = logits.grad.abs().sum(dim=(2, 3)) > 0
    assert touched.tolist() == [[c == k for k in range(4)] for c in classes.tolist()]


def test_class_agnostic_loss():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 5, 5, generator=generator)
    targets = (torch.rand(3, 5, 5, generator=generator) > 0.3).float()
    loss = mask_rcnn_loss(logits, torch.tensor([2, 7, 1]), targets)
    torch.testing.assert_close(loss, direct_bce(logits[:, 0], targets).float())


def test_zero_positives_give_a_zero_loss_with_gradients():
    weight = torch.nn.Parameter(torch.randn(4, 2, 1, 1))
    logits = torch.nn.functional.conv2d(torch.zeros(0, 2, 6, 6), weight)  # (0, 4, 6, 6)
    loss = mask_rcnn_loss(logits, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 6, 6))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert weight.grad is not None and torch.equal(weight.grad, torch.zeros_like(weight))


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="RESOLUTION"):
        mask_rcnn_loss(torch.zeros(2, 3, 14, 14), torch.tensor([1, 2]), torch.zeros(2, 28, 28))
