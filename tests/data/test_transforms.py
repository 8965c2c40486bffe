"""Resize, flips and colour jitter of images, boxes and masks."""

import numpy as np
import pytest
import torch

from detector.config import load_config
from detector.data.build import build_transforms
from detector.data.transforms import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomVerticalFlip,
    ResizeShortestEdge,
    clip_and_drop_empty,
    flip_target,
    get_output_size,
)
from detector.structures import BitMasks, Boxes, Instances, PolygonMasks


@pytest.mark.parametrize(
    ("size", "min_size", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.67
        ((640, 427), 800, 1333, (1199, 800)),  # 640 * 800 / 427 = 1199.06
        ((100, 1000), 800, 1333, (133, 1333)),  # long side capped: scale 1.333
        ((294, 640), 600, 1000, (459, 1000)),  # 640 * 600 / 294 = 1306 > 1000
        ((128, 128), 128, 1333, (128, 128)),
        ((300, 200), 100, 0, (150, 100)),  # max_size 0: no cap
    ],
)
def test_output_size_hand_computed(size, min_size, max_size, expected):
    assert get_output_size(*size, min_size, max_size) == expected


def _target(height: int = 20, width: int = 30) -> Instances:
    bitmaps = torch.zeros(2, height, width, dtype=torch.bool)
    bitmaps[0, 2:8, 3:13] = True
    bitmaps[1, 10:20, 20:30] = True
    return Instances(
        (height, width),
        gt_boxes=Boxes(torch.tensor([[3.0, 2.0, 13.0, 8.0], [20.0, 10.0, 30.0, 20.0]])),
        gt_classes=torch.tensor([1, 2]),
        gt_masks=BitMasks(bitmaps),
        difficult=torch.tensor([False, True]),
    )


def test_resize_scales_image_boxes_and_masks():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    resized, target = ResizeShortestEdge([40], 1000)(image, _target())
    assert resized.shape == (3, 40, 60) and resized.dtype == torch.uint8
    assert target.image_size == (40, 60)
    torch.testing.assert_close(
        target.gt_boxes.tensor, torch.tensor([[6.0, 4.0, 26.0, 16.0], [40.0, 20.0, 60.0, 40.0]])
    )
    assert target.gt_masks.image_size == (40, 60)
    assert torch.equal(target.gt_masks.get_bounding_boxes().tensor, target.gt_boxes.tensor)
    assert target.difficult.tolist() == [False, True] and target.gt_classes.tolist() == [1, 2]


def test_multi_scale_choice_uses_the_generator():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    resize = ResizeShortestEdge([10, 20, 30, 40], 1000)
    seen = {
        resize(image, _target(), torch.Generator().manual_seed(s))[0].shape[1] for s in range(40)
    }
    assert seen == {10, 20, 30, 40}
    for seed in range(5):
        first = resize(image, _target(), torch.Generator().manual_seed(seed))[0].shape
        again = resize(image, _target(), torch.Generator().manual_seed(seed))[0].shape
        assert first == again


def test_flip_moves_boxes_and_bitmasks_together():
    image = torch.arange(3 * 20 * 30, dtype=torch.int64).reshape(3, 20, 30).to(torch.uint8)
    flipped, target = RandomHorizontalFlip(1.0)(image, _target())
    assert torch.equal(flipped, image.flip(-1))
    torch.testing.assert_close(
        target.gt_boxes.tensor, torch.tensor([[17.0, 2.0, 27.0, 8.0], [0.0, 10.0, 10.0, 20.0]])
    )
    assert torch.equal(target.gt_masks.get_bounding_boxes().tensor, target.gt_boxes.tensor)
    unchanged, same = RandomHorizontalFlip(0.0)(image, _target())
    assert torch.equal(unchanged, image) and torch.equal(
        same.gt_boxes.tensor, _target().gt_boxes.tensor
    )


def test_flip_of_polygons_matches_flip_of_their_bitmap():
    polygons = PolygonMasks([[np.array([2.0, 1.0, 12.0, 3.0, 6.0, 15.0])]])
    target = Instances((20, 30), gt_boxes=polygons.get_bounding_boxes(), gt_masks=polygons)
    flipped = flip_target(target)
    expected = polygons.to_bitmasks(20, 30).tensor.flip(-1)
    assert torch.equal(flipped.gt_masks.to_bitmasks(20, 30).tensor, expected)
    torch.testing.assert_close(flipped.gt_boxes.tensor, torch.tensor([[18.0, 1.0, 28.0, 15.0]]))
    twice = flip_target(flipped)
    np.testing.assert_allclose(twice.gt_masks.polygons[0][0], polygons.polygons[0][0])


def test_resize_polygons_scales_coordinates():
    polygons = PolygonMasks([[np.array([2.0, 1.0, 12.0, 3.0, 6.0, 15.0])]])
    target = Instances((20, 30), gt_boxes=polygons.get_bounding_boxes(), gt_masks=polygons)
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    _, resized = ResizeShortestEdge([10], 1000)(image, target)
    np.testing.assert_allclose(resized.gt_masks.polygons[0][0], [1.0, 0.5, 6.0, 1.5, 3.0, 7.5])


def test_clip_and_drop_empty_counts():
    target = Instances(
        (20, 30),
        gt_boxes=Boxes(
            torch.tensor([[-5.0, 2, 10, 8], [31, 2, 40, 8], [5, 5, 5, 9], [1, 1, 2, 2]])
        ),
        gt_classes=torch.tensor([1, 2, 3, 1]),
    )
    kept, dropped = clip_and_drop_empty(target)
    assert dropped == 2
    assert kept.gt_classes.tolist() == [1, 1]
    torch.testing.assert_close(kept.gt_boxes.tensor, torch.tensor([[0.0, 2, 10, 8], [1, 1, 2, 2]]))


def test_vertical_flip_moves_boxes_bitmasks_and_polygons_together():
    image = torch.arange(3 * 20 * 30, dtype=torch.int64).reshape(3, 20, 30).to(torch.uint8)
    flipped, target = RandomVerticalFlip(1.0)(image, _target())
    assert torch.equal(flipped, image.flip(-2))
    torch.testing.assert_close(
        target.gt_boxes.tensor, torch.tensor([[3.0, 12.0, 13.0, 18.0], [20.0, 0.0, 30.0, 10.0]])
    )
    assert torch.equal(target.gt_masks.get_bounding_boxes().tensor, target.gt_boxes.tensor)
    polygons = PolygonMasks([[np.array([2.0, 1.0, 12.0, 3.0, 6.0, 15.0])]])
    poly_target = Instances((20, 30), gt_boxes=polygons.get_bounding_boxes(), gt_masks=polygons)
    poly_flipped = flip_target(poly_target, vertical=True)
    expected = polygons.to_bitmasks(20, 30).tensor.flip(-2)
    differing = (poly_flipped.gt_masks.to_bitmasks(20, 30).tensor != expected).sum()
    assert differing <= 3  # of ~65 pixels: the rasterizer breaks ties on edges one way only
    torch.testing.assert_close(poly_flipped.gt_boxes.tensor, torch.tensor([[2.0, 5.0, 12.0, 19.0]]))


def test_color_jitter_changes_pixels_not_targets_and_follows_the_generator():
    image = torch.randint(
        0, 256, (3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    out, target = jitter(image, _target(), torch.Generator().manual_seed(3))
    again, _ = jitter(image, _target(), torch.Generator().manual_seed(3))
    other, _ = jitter(image, _target(), torch.Generator().manual_seed(4))
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(out, again) and not torch.equal(out, image) and not torch.equal(out, other)
    assert torch.equal(target.gt_boxes.tensor, _target().gt_boxes.tensor)
    brighter, _ = ColorJitter(brightness=0.5)(image, _target(), torch.Generator().manual_seed(0))
    factor = brighter.float().sum() / image.float().sum()
    assert 0.5 - 1e-6 <= factor <= 1.5  # a brightness factor from [0.5, 1.5] (clamped at 255)
    with pytest.raises(ValueError, match="hue must lie in"):
        ColorJitter(hue=0.6)


def test_config_keys_build_the_jitter_and_vertical_flip():
    cfg = load_config(None, ["INPUT.BRIGHTNESS", "0.2", "INPUT.VERTICAL_FLIP_PROB_TRAIN", "0.5"])
    names = [type(t).__name__ for t in build_transforms(cfg, True).transforms]
    assert names == [
        "ColorJitter",
        "ResizeShortestEdge",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
    ]
    plain = [type(t).__name__ for t in build_transforms(load_config(None), True).transforms]
    assert plain == ["ResizeShortestEdge", "RandomHorizontalFlip"]


@pytest.mark.parametrize("mode", ResizeShortestEdge.MODES)
@pytest.mark.parametrize(("height", "width"), [(20, 20000), (20000, 20), (3, 9000)])
def test_very_elongated_images_keep_a_one_pixel_side(mode, height, width):
    """A 20000x20 image at MAX_SIZE 128 used to give a 0-pixel side ('Input and output sizes
    should be greater than 0')."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    target = Instances((height, width), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]])))
    resized, new_target = ResizeShortestEdge([128], 128, mode)(image, target)
    long_side = 128
    expected = (1, long_side) if height < width else (long_side, 1)
    assert tuple(resized.shape[-2:]) == expected == new_target.image_size
