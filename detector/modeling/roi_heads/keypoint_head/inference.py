"""Keypoint R-CNN inference: heatmaps -> keypoint coordinates and scores.

Each RoI's K heatmaps (S x S logits over the box) are resized bicubically to the box's size in
pixels (ceil(w) x ceil(h), w and h at least 1); the argmax cell (i, j) of each becomes the point
((j + 0.5) * w / ceil(w) + x1, (i + 0.5) * h / ceil(h) + y1) (a cell's centre, Heckbert's
"c = d + 0.5"), and its score is the resized logit there, as in torchvision and detectron2.

Shapes: R RoIs, K keypoints, S the heatmap side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["heatmaps_to_keypoints", "scale_keypoints"]


def scale_keypoints(keypoints: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """Predicted keypoints Tensor[R, K, 3] (x, y, score) of a resized image mapped back: x and y
    scaled (not clipped, as torchvision does), scores kept."""
    return keypoints * keypoints.new_tensor([scale_x, scale_y, 1.0])


def _roi_keypoints(heatmaps: Tensor, box: Tensor) -> Tensor:
    """One RoI: heatmaps Tensor[K, S, S], box Tensor[4] -> Tensor[K, 3] (x, y, score)."""
    width = (box[2] - box[0]).clamp(min=1)
    height = (box[3] - box[1]).clamp(min=1)
    out_width, out_height = int(width.ceil().item()), int(height.ceil().item())
    resized = F.interpolate(
        heatmaps[:, None], size=(out_height, out_width), mode="bicubic", align_corners=False
    )[:, 0]  # (K, S, S) -> (K, h, w)
    flat = resized.reshape(resized.shape[0], -1)  # (K, h*w)
    best = flat.argmax(dim=1)  # (K,)
    col = best % out_width
    row = torch.div(best - col, out_width, rounding_mode="floor")
    x = (col.float() + 0.5) * (width / out_width) + box[0]
    y = (row.float() + 0.5) * (height / out_height) + box[1]
    scores = flat.gather(1, best[:, None])[:, 0]
    return torch.stack([x, y, scores.float()], dim=1)


def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor) -> Tensor:
    """Keypoints of R RoIs from their heatmaps (see the module doc).

    Args:
        heatmaps: Tensor[R, K, S, S] logits.
        boxes: Tensor[R, 4] xyxy, the RoIs the heatmaps cover.

    Returns:
        Tensor[R, K, 3] float32: (x, y, score) in the boxes' coordinates.
    """
    if heatmaps.dim() != 4 or boxes.shape != (heatmaps.shape[0], 4):
        raise ValueError(
            f"heatmaps_to_keypoints: expected heatmaps (R, K, S, S) and boxes (R, 4), got "
            f"{tuple(heatmaps.shape)} and {tuple(boxes.shape)}"
        )
    if heatmaps.shape[0] == 0:
        return heatmaps.new_zeros((0, heatmaps.shape[1], 3), dtype=torch.float32)
    return torch.stack(
        [_roi_keypoints(maps, box) for maps, box in zip(heatmaps, boxes, strict=True)]
    )
