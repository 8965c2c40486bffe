"""Boxes and pairwise_iou, on hand-made cases and against torchvision.ops.box_iou."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from detector.structures import Boxes, pairwise_iou


def test_construction_and_dtype():
    boxes = Boxes(torch.tensor([[0, 0, 10, 20]]))
    assert boxes.tensor.dtype == torch.float32
    assert Boxes([[1.0, 2.0, 3.0, 4.0]]).tensor.shape == (1, 4)
    assert Boxes(torch.empty(0)).tensor.shape == (0, 4)
    assert Boxes(torch.zeros(2, 4, dtype=torch.float64)).tensor.dtype == torch.float64
    with pytest.raises(ValueError, match=r"Tensor\[N, 4\]"):
        Boxes(torch.zeros(3, 5))


def test_area_widths_heights_centers():
    boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 6.5, 7.0]]))
    torch.testing.assert_close(boxes.area(), torch.tensor([200.0, 3.0]))
    torch.testing.assert_close(boxes.widths, torch.tensor([10.0, 1.5]))
    torch.testing.assert_close(boxes.heights, torch.tensor([20.0, 2.0]))
    torch.testing.assert_close(boxes.centers(), torch.tensor([[5.0, 10.0], [5.75, 6.0]]))


def test_clip_uses_height_width_order():
    boxes = Boxes(torch.tensor([[-5.0, -5.0, 50.0, 50.0], [10.0, 10.0, 20.0, 20.0]]))
    clipped = boxes.clip((30, 40))  # height 30, width 40
    torch.testing.assert_close(
        clipped.tensor, torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 10.0, 20.0, 20.0]])
    )
    # The input is unchanged.
    assert boxes.tensor[0, 0] == -5.0


def test_nonempty():
    boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 10], [0, 0, 1, 0.5], [3, 3, 2, 4]]))
    assert boxes.nonempty().tolist() == [True, False, True, False]
    assert boxes.nonempty(threshold=0.5).tolist() == [True, False, False, False]


def test_scale():
    boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    torch.testing.assert_close(boxes.scale(2.0, 0.5).tensor, torch.tensor([[2.0, 1.0, 6.0, 2.0]]))


def test_flip_horizontal_and_twice_is_identity():
    boxes = Boxes(torch.tensor([[0.0, 1.0, 10.0, 5.0], [30.0, 2.0, 40.0, 8.0]]))
    flipped = boxes.flip(40)
    torch.testing.assert_close(
        flipped.tensor, torch.tensor([[30.0, 1.0, 40.0, 5.0], [0.0, 2.0, 10.0, 8.0]])
    )
    torch.testing.assert_close(flipped.flip(40).tensor, boxes.tensor)
    torch.testing.assert_close(flipped.area(), boxes.area())


def test_getitem_len_cat_to():
    boxes = Boxes(torch.arange(20, dtype=torch.float32).view(5, 4))
    assert len(boxes) == 5
    assert len(boxes[1]) == 1 and boxes[1].tensor.shape == (1, 4)
    assert len(boxes[1:3]) == 2
    assert boxes[torch.tensor([True, False, True, False, False])].tensor[:, 0].tolist() == [0, 8]
    assert boxes[torch.tensor([4, 0])].tensor[:, 0].tolist() == [16, 0]
    both = Boxes.cat([boxes[:2], boxes[3:]])
    assert both.tensor[:, 0].tolist() == [0, 4, 12, 16]
    assert len(Boxes.cat([])) == 0
    assert boxes.to("cpu").device.type == "cpu"
    assert [tuple(b.shape) for b in boxes] == [(4,)] * 5


def test_pairwise_iou_known_values():
    a = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    b = Boxes(
        torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # same: 1
                [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
                [10.0, 10.0, 20.0, 20.0],  # touching corner: 0
                [2.0, 2.0, 4.0, 4.0],  # inside: 4 / 100
                [20.0, 20.0, 30.0, 30.0],  # disjoint: 0
            ]
        )
    )
    iou = pairwise_iou(a, b)
    assert iou.shape == (1, 5)
    torch.testing.assert_close(iou[0], torch.tensor([1.0, 1 / 3, 0.0, 0.04, 0.0]))


def test_pairwise_iou_equals_torchvision():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=generator) * 100
    wh = torch.rand(40, 2, generator=generator) * 50
    boxes1 = torch.cat([xy, xy + wh], dim=1)
    xy = torch.rand(30, 2, generator=generator) * 100
    wh = torch.rand(30, 2, generator=generator) * 50
    boxes2 = torch.cat([xy, xy + wh], dim=1)
    ours = pairwise_iou(Boxes(boxes1), Boxes(boxes2))
    assert torch.equal(ours, box_iou(boxes1, boxes2))
    assert torch.equal(pairwise_iou(boxes1, boxes2), ours)  # plain tensors work too


def test_pairwise_iou_empty_inputs_and_degenerate_pairs():
    assert pairwise_iou(Boxes(torch.empty(0, 4)), Boxes(torch.rand(3, 4))).shape == (0, 3)
    point = Boxes(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))
    assert pairwise_iou(point, point).item() == 0.0  # torchvision gives NaN here
