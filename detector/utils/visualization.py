"""Pictures of detections: translucent masks, boxes and "class score" labels."""

from __future__ import annotations

from typing import Any

from torch import Tensor

# A fixed palette (tab10), one colour per class id.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def select(result: dict[str, Any], score_thresh: float) -> dict[str, Any]:
    """The detections of one result dict scoring at least `score_thresh`."""
    keep = result["scores"] >= score_thresh  # (N,) bool
    out = {k: v[keep] for k, v in result.items() if isinstance(v, Tensor)}
    out["class_names"] = [n for n, k in zip(result["class_names"], keep.tolist(), strict=True) if k]
    out["image_size"] = result["image_size"]
    return out


def draw(image: Tensor, result: dict[str, Any]) -> Tensor:
    """uint8 Tensor[3, H, W] with translucent masks, boxes and "name score" labels drawn."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    colors = [PALETTE[int(k) % len(PALETTE)] for k in result["labels"].tolist()]
    if len(colors) == 0:
        return image
    if "masks" in result:
        image = draw_segmentation_masks(image, result["masks"], alpha=0.4, colors=colors)
    labels = [
        f"{name} {score:.2f}"
        for name, score in zip(result["class_names"], result["scores"].tolist(), strict=True)
    ]
    width = max(1, round(max(image.shape[-2:]) / 400))
    return draw_bounding_boxes(image, result["boxes"], labels=labels, colors=colors, width=width)
