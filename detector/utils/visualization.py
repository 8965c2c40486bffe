"""Pictures of detections: translucent masks, keypoints and their skeleton, boxes and "class
score" labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from detector.utils.arrays import from_numpy, tolist

# A colour as PIL and torchvision take it: a name or (r, g, b).
Color = str | tuple[int, int, int]

# Keypoints scoring (heatmap logit) below this are not drawn (detectron2's threshold).
KEYPOINT_DRAW_THRESH = 0.05
# A fixed palette (tab10), one colour per class id.
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def select(result: dict[str, Any], score_thresh: float) -> dict[str, Any]:
    """The detections of one result dict scoring at least `score_thresh`."""
    keep = result["scores"] >= score_thresh  # (N,) bool
    out: dict[str, Any] = {k: v[keep] for k, v in result.items() if isinstance(v, Tensor)}
    out["class_names"] = [n for n, k in zip(result["class_names"], keep.tolist(), strict=True) if k]
    out["image_size"] = result["image_size"]
    return out


def label_font_size(height: int, width: int) -> int:
    """The label text height in pixels: 1/25 of the image's shorter side, at least 10."""
    return max(10, round(min(height, width) / 25))


def label_origin(
    box: Sequence[float], text_size: tuple[float, float], image_size: tuple[int, int]
) -> tuple[int, int]:
    """Top-left corner (x, y) of a label of `text_size` (w, h) for `box` (x1, y1, x2, y2): above
    the box's top-left corner, or just inside it when there is no room above, moved left and up
    as needed so that the whole label lies inside the (H, W) image."""
    (text_w, text_h), (height, width) = text_size, image_size
    x1, y1 = box[0], box[1]
    y = y1 - text_h if y1 - text_h >= 0 else y1
    x = min(max(x1, 0), max(width - text_w, 0))
    y = min(max(y, 0), max(height - text_h, 0))
    return round(x), round(y)


def draw(image: Tensor, result: dict[str, Any], skeleton: Sequence[tuple[int, int]] = ()) -> Tensor:
    """uint8 Tensor[3, H, W] with translucent masks, keypoints (result["keypoints"], (N, K, 3)
    x, y, score: those scoring at least KEYPOINT_DRAW_THRESH, joined by the `skeleton` index
    pairs), boxes and "name score" labels drawn; the labels lie inside the picture, their size
    follows the image's (label_font_size)."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    colors: list[Color] = [PALETTE[int(k) % len(PALETTE)] for k in result["labels"].tolist()]
    if len(colors) == 0:
        return image
    if "masks" in result:
        image = draw_segmentation_masks(image, result["masks"], alpha=0.4, colors=colors)
    width = max(1, round(max(image.shape[-2:]) / 400))
    if "keypoints" in result:
        image = _draw_keypoints(image, result["keypoints"], skeleton, colors, width)
    image = draw_bounding_boxes(image, result["boxes"], colors=colors, width=width)
    labels = [
        f"{name} {score:.2f}"
        for name, score in zip(result["class_names"], result["scores"].tolist(), strict=True)
    ]
    return _draw_labels(image, result["boxes"].tolist(), labels, colors)


def _draw_keypoints(
    image: Tensor,
    keypoints: Tensor,
    skeleton: Sequence[tuple[int, int]],
    colors: Sequence[Color],
    width: int,
) -> Tensor:
    """Each instance's keypoints (N, K, 3) as dots in its colour, joined by skeleton lines in
    its colour (only between keypoints that are drawn)."""
    import numpy as np
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    canvas = ImageDraw.Draw(picture)
    radius = width + 1
    instances: list[list[list[float]]] = tolist(keypoints)  # (N, K, 3)
    for points, color in zip(instances, colors, strict=True):
        shown = [score >= KEYPOINT_DRAW_THRESH for _, _, score in points]
        for a, b in skeleton:
            if shown[a] and shown[b]:
                canvas.line([tuple(points[a][:2]), tuple(points[b][:2])], fill=color, width=width)
        for (x, y, _), visible in zip(points, shown, strict=True):
            if visible:
                canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    return from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()


def _draw_labels(
    image: Tensor, boxes: list[list[float]], labels: list[str], colors: Sequence[Color]
) -> Tensor:
    """White text on the class colour, one label per box, placed by label_origin."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    height, width = image.shape[-2:]
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    canvas = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=label_font_size(height, width))
    for box, label, color in zip(boxes, labels, colors, strict=True):
        _, _, right, bottom = canvas.textbbox((0, 0), label, font=font)
        text_size = (right + 2, bottom + 2)  # a 1-pixel margin around the glyphs
        x, y = label_origin(box, text_size, (height, width))
        canvas.rectangle((x, y, x + text_size[0] - 1, y + text_size[1] - 1), fill=color)
        canvas.text((x + 1, y + 1), label, fill=(255, 255, 255), font=font)
    return from_numpy(np.array(picture)).permute(2, 0, 1).contiguous()
