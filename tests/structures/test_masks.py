"""PolygonMasks and BitMasks: areas, rasterization, RLE, flips, resizes, mask targets."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detector.structures import BitMasks, Boxes, PolygonMasks, polygons_to_bitmask

SQUARE = [0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]  # 10 x 10 at the origin
TRIANGLE = [20.0, 0.0, 30.0, 0.0, 20.0, 10.0]  # legs of 10: area 50
RECT = [2.0, 4.0, 8.0, 4.0, 8.0, 6.0, 2.0, 6.0]  # 6 x 2


def polygons() -> PolygonMasks:
    return PolygonMasks([[SQUARE], [TRIANGLE, RECT], [RECT]])


def test_polygon_area():
    torch.testing.assert_close(polygons().area(), torch.tensor([100.0, 62.0, 12.0]))


def test_polygon_validation():
    with pytest.raises(ValueError, match="instance 0, polygon 0 has 4 coordinates"):
        PolygonMasks([[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="instance 1, polygon 0 has 7"):
        PolygonMasks([[SQUARE], [[0, 0, 1, 1, 2, 2, 3]]])
    with pytest.raises(ValueError, match="list of polygons"):
        PolygonMasks([np.array(SQUARE)])


def test_polygon_indexing_and_cat():
    masks = polygons()
    assert len(masks) == 3
    assert len(masks[0]) == 1 and masks[0].polygons[0][0].tolist() == SQUARE
    assert len(masks[1:]) == 2
    picked = masks[torch.tensor([True, False, True])]
    torch.testing.assert_close(picked.area(), torch.tensor([100.0, 12.0]))
    torch.testing.assert_close(masks[[2, 0]].area(), torch.tensor([12.0, 100.0]))
    torch.testing.assert_close(masks[torch.tensor([1])].area(), torch.tensor([62.0]))
    assert len(PolygonMasks.cat([masks, masks[:1]])) == 4
    assert masks.to("cpu") is masks


def test_polygon_scale_and_flip():
    masks = polygons()
    scaled = masks.scale(2.0, 0.5)
    torch.testing.assert_close(scaled.area(), masks.area())  # 2 * 0.5 = 1
    assert scaled.polygons[0][0].tolist() == [0, 0, 20, 0, 20, 5, 0, 5]
    flipped = masks.flip(40)
    assert flipped.polygons[0][0].tolist() == [40, 0, 30, 0, 30, 10, 40, 10]
    torch.testing.assert_close(flipped.area(), masks.area())
    twice = flipped.flip(40)
    for a, b in zip(twice.polygons, masks.polygons, strict=True):
        for p, q in zip(a, b, strict=True):
            np.testing.assert_array_equal(p, q)


def test_polygon_bounding_boxes():
    boxes = polygons().get_bounding_boxes()
    torch.testing.assert_close(
        boxes.tensor, torch.tensor([[0.0, 0, 10, 10], [2, 0, 30, 10], [2, 4, 8, 6]])
    )


def test_polygons_to_bitmasks():
    bitmasks = polygons().to_bitmasks(12, 40)
    assert isinstance(bitmasks, BitMasks)
    assert bitmasks.tensor.shape == (3, 12, 40) and bitmasks.tensor.dtype == torch.bool
    # Axis-aligned rectangles rasterize exactly: pixel (i, j) covers [j, j + 1) x [i, i + 1).
    assert bitmasks.tensor[0].sum() == 100 and bitmasks.tensor[0, :10, :10].all()
    assert bitmasks.tensor[2].sum() == 12 and bitmasks.tensor[2, 4:6, 2:8].all()
    # The triangle is close to its area of 50.
    triangle = polygons_to_bitmask([np.array(TRIANGLE)], 12, 40)
    assert abs(int(triangle.sum()) - 50) <= 6
    # Bitmap boxes match polygon boxes for rectangles.
    torch.testing.assert_close(bitmasks[[0, 2]].get_bounding_boxes().tensor,
                               torch.tensor([[0.0, 0, 10, 10], [2, 4, 8, 6]]))  # fmt: skip


def test_from_rle_compressed_and_uncompressed():
    bitmap = np.zeros((6, 7), dtype=np.uint8, order="F")
    bitmap[1:4, 2:6] = 1
    compressed = mask_util.encode(bitmap)
    # Column-major runs: 2 empty columns + 1 pixel, then 3 on / 3 off four times, 8 off.
    uncompressed = {"size": [6, 7], "counts": [13, 3, 3, 3, 3, 3, 3, 3, 8]}
    masks = BitMasks.from_rle([compressed, uncompressed])
    assert masks.tensor.shape == (2, 6, 7)
    assert torch.equal(masks.tensor[0], torch.from_numpy(bitmap.astype(bool)))
    assert torch.equal(masks.tensor[1], masks.tensor[0])
    torch.testing.assert_close(masks.area(), torch.tensor([12.0, 12.0]))
    assert BitMasks.from_rle([], 6, 7).tensor.shape == (0, 6, 7)
    with pytest.raises(ValueError, match="height and width"):
        BitMasks.from_rle([])


def test_bitmask_flip_resize_index():
    tensor = torch.zeros(2, 4, 6, dtype=torch.bool)
    tensor[0, 1:3, 0:2] = True
    tensor[1, 0, 5] = True
    masks = BitMasks(tensor)
    flipped = masks.flip(6)
    assert flipped.tensor[0, 1:3, 4:6].all() and flipped.tensor[0].sum() == 4
    assert flipped.tensor[1, 0, 0]
    assert torch.equal(flipped.flip().tensor, tensor)
    with pytest.raises(ValueError, match="width"):
        masks.flip(7)
    doubled = masks.scale(2.0, 2.0)
    assert doubled.image_size == (8, 12)
    torch.testing.assert_close(doubled.area(), masks.area() * 4)
    assert torch.equal(doubled.resize(4, 6).tensor, tensor)
    assert len(masks[1]) == 1 and masks[1].tensor.sum() == 1
    assert len(masks[torch.tensor([False, True])]) == 1
    assert len(masks[[1, 0, 1]]) == 3
    assert len(BitMasks.cat([masks, masks])) == 4
    assert BitMasks(np.ones((1, 2, 2), dtype=np.uint8)).tensor.dtype == torch.bool


def test_flip_commutes_with_rasterization():
    masks = polygons()
    a = masks.flip(40).to_bitmasks(12, 40).tensor
    b = masks.to_bitmasks(12, 40).flip(40).tensor
    # Rectangles are exact; the triangle's edge pixels may round differently.
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert (a[1] ^ b[1]).sum() <= 10


def test_crop_and_resize_rectangles_are_full():
    masks = PolygonMasks([[SQUARE], [RECT]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 4.0, 8.0, 6.0]])
    for source in (masks, masks.to_bitmasks(12, 12)):
        targets = source.crop_and_resize(boxes, 7)
        assert targets.shape == (2, 7, 7) and targets.dtype == torch.float32
        assert targets.eq(1).all(), type(source).__name__


def test_crop_and_resize_half_box():
    # The box covers the square's left half and as much empty space on its left.
    masks = PolygonMasks([[SQUARE]])
    box = Boxes(torch.tensor([[-10.0, 0.0, 10.0, 10.0]]))
    expected = torch.zeros(1, 8, 8)
    expected[:, :, 4:] = 1
    for source in (masks, masks.to_bitmasks(12, 12)):
        assert torch.equal(source.crop_and_resize(box, 8), expected), type(source).__name__


def test_crop_and_resize_polygon_and_bitmap_agree():
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    circle = np.stack([50 + 30 * np.cos(angles), 40 + 20 * np.sin(angles)], 1).reshape(-1)
    masks = PolygonMasks([[circle], [circle]])
    boxes = torch.tensor([[20.0, 20.0, 80.0, 60.0], [30.0, 10.0, 70.0, 50.0]])
    from_polygons = masks.crop_and_resize(boxes, 28)
    from_bitmaps = masks.to_bitmasks(100, 100).crop_and_resize(boxes, 28)
    assert (from_polygons - from_bitmaps).abs().mean() < 0.05


def test_crop_and_resize_with_indices_equals_indexing_first():
    masks = polygons()
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [18.0, 0.0, 31.0, 11.0], [1.0, 3.0, 9.0, 7.0], [2, 2, 8, 8.0]]
    )
    indices = torch.tensor([0, 1, 1, 2])
    for source in (masks, masks.to_bitmasks(32, 32)):
        expected = source[indices].crop_and_resize(boxes, 6)
        assert torch.equal(source.crop_and_resize(boxes, 6, indices=indices), expected)
        with pytest.raises(ValueError, match="one mask index per box"):
            source.crop_and_resize(boxes, 6, indices=indices[:3])
        with pytest.raises(IndexError, match="outside the 3 masks"):
            source.crop_and_resize(boxes, 6, indices=torch.tensor([0, 1, 3, 2]))


def test_crop_and_resize_empty_and_mismatch():
    assert PolygonMasks([]).crop_and_resize(torch.empty(0, 4), 5).shape == (0, 5, 5)
    empty_bitmaps = BitMasks(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert empty_bitmaps.crop_and_resize(torch.empty(0, 4), 5).shape == (0, 5, 5)
    with pytest.raises(ValueError, match="2 boxes for 1 masks"):
        PolygonMasks([[SQUARE]]).crop_and_resize(torch.zeros(2, 4), 5)
