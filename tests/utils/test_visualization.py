"""Labels of tools/demo.py's pictures (issue 19, item 10): inside the picture, sized to it."""

from __future__ import annotations

import torch

from detector.utils.visualization import PALETTE, draw, label_font_size, label_origin


def test_label_stays_inside_at_the_right_and_top_edges() -> None:
    """Was: labels cut off at the image's right edge on small images."""
    size = (90, 120)  # H, W
    assert label_origin([100, 40, 119, 80], (70, 12), size) == (50, 28)  # moved left
    assert label_origin([5, 3, 40, 30], (70, 12), size) == (5, 3)  # no room above: inside
    assert label_origin([5, 40, 40, 80], (70, 12), size) == (5, 28)  # above the box
    assert label_origin([-3, 85, 30, 89], (200, 12), size) == (0, 73)  # wider than the image


def test_font_follows_the_image_size() -> None:
    """Was: a fixed tiny font."""
    assert label_font_size(90, 120) == 10 and label_font_size(800, 1200) == 32


def _label_pixels(height: int, width: int) -> int:
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    scale = width / 120
    result = {
        "boxes": torch.tensor([[100.0, 40.0, 119.0, 80.0]]) * scale,
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.99]),
        "class_names": ["triangle"],
    }
    drawn = draw(image, result)
    white = (drawn > 200).all(0)  # the (antialiased) white text
    assert white.any() and not white[:, : round(40 * scale)].any()  # the text: left of the box
    color = torch.tensor(PALETTE[1], dtype=torch.uint8)[:, None, None]
    return int((drawn == color).all(0).sum())


def test_drawn_label_grows_with_the_image() -> None:
    assert _label_pixels(720, 960) > 4 * _label_pixels(90, 120)  # font 29 px against 10


def test_keypoints_and_skeleton_are_drawn_above_the_threshold() -> None:
    """Dots at the keypoints scoring at least KEYPOINT_DRAW_THRESH, a line along each skeleton
    edge between two of them, nothing at a low-scoring keypoint."""
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    result = {
        "boxes": torch.tensor([[5.0, 5.0, 95.0, 95.0]]),
        "labels": torch.tensor([2]),
        "scores": torch.tensor([0.9]),
        "class_names": ["person"],
        "keypoints": torch.tensor([[[20.0, 50.0, 3.0], [80.0, 50.0, 2.0], [50.0, 85.0, -1.0]]]),
    }
    drawn = draw(image, result, skeleton=[(0, 1), (1, 2)])
    color = torch.tensor(PALETTE[2], dtype=torch.uint8)
    painted = (drawn == color[:, None, None]).all(0)  # (H, W)
    assert painted[50, 20] and painted[50, 80] and painted[50, 50]  # both dots and their line
    assert not painted[85, 50] and not painted[70, 65]  # the hidden keypoint and its edge
