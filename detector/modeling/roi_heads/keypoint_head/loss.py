"""Keypoint R-CNN's targets and loss (He et al. 2017, Sec. 5).

Each visible (v > 0) ground-truth keypoint of a positive RoI's matched instance that falls in
the RoI is a one-hot target on the RoI's S x S heatmap grid: the cell floor((x - x1) * S / w),
floor((y - y1) * S / h) (a keypoint exactly on the RoI's right or bottom edge takes the last
cell). The loss is the softmax cross-entropy over the S^2 cells of each such keypoint's heatmap,
averaged over all of them in the batch (torchvision's and maskrcnn_benchmark's normalization).

Shapes: P positive RoIs (all images), K keypoints, S the heatmap side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.per_image import required
from detector.structures.instances import Instances

__all__ = ["keypoint_rcnn_loss", "keypoint_rcnn_targets", "keypoints_to_heatmap_cells"]


def keypoints_to_heatmap_cells(
    keypoints: Tensor, rois: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """The heatmap cell of each keypoint in its RoI.

    Args:
        keypoints: Tensor[P, K, 3] (x, y, v) in image coordinates.
        rois: Tensor[P, 4] xyxy, one per keypoint set.
        heatmap_size: S.

    Returns:
        cells: Tensor[P, K] int64, y * S + x (0 where not valid).
        valid: Tensor[P, K] bool: v > 0 and inside the RoI.
    """
    x1, y1, x2, y2 = (rois[:, j : j + 1] for j in range(4))  # each (P, 1)
    x, y = keypoints[..., 0], keypoints[..., 1]  # (P, K)
    col = ((x - x1) * (heatmap_size / (x2 - x1))).floor().long()
    row = ((y - y1) * (heatmap_size / (y2 - y1))).floor().long()
    col = torch.where(x == x2, heatmap_size - 1, col)  # on the right edge: the last column
    row = torch.where(y == y2, heatmap_size - 1, row)
    inside = (col >= 0) & (row >= 0) & (col < heatmap_size) & (row < heatmap_size)
    valid = inside & (keypoints[..., 2] > 0)
    cells = (row * heatmap_size + col) * valid
    return cells, valid


def keypoint_rcnn_targets(
    positive_rois: list[Instances], targets: list[Instances], heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """The heatmap cells and validity of the keypoints of every image's positive RoIs.

    Args:
        positive_rois: per image, the foreground sampled RoIs (proposal_boxes, matched_gt_idx).
        targets: per image, the ground truth with gt_keypoints.
        heatmap_size: S.

    Returns:
        cells: Tensor[P, K] int64; valid: Tensor[P, K] bool (see keypoints_to_heatmap_cells).
    """
    cells: list[Tensor] = []  # per image (P_i, K)
    valid: list[Tensor] = []
    for image, (rois, target) in enumerate(zip(positive_rois, targets, strict=True)):
        if target.gt_keypoints is None:
            raise ValueError(
                f"keypoint head (training): targets[{image}] has no gt_keypoints (is the training "
                "dataset a keypoint dataset?)"
            )
        boxes = required(rois.proposal_boxes, "proposal_boxes")
        matched = target.gt_keypoints.tensor.to(boxes.device)[rois.matched_gt_idx]
        image_cells, image_valid = keypoints_to_heatmap_cells(matched, boxes.tensor, heatmap_size)
        cells.append(image_cells)
        valid.append(image_valid)
    return torch.cat(cells), torch.cat(valid)


def keypoint_rcnn_loss(keypoint_logits: Tensor, cells: Tensor, valid: Tensor) -> Tensor:
    """Softmax cross-entropy over heatmap cells, averaged over the valid keypoints.

    Args:
        keypoint_logits: Tensor[P, K, S, S].
        cells: Tensor[P, K] int64 target cells; valid: Tensor[P, K] bool.

    Returns:
        A scalar; without any valid keypoint, 0 computed from the logits (``sum() * 0``), so
        that every parameter gets a (zero) gradient and DistributedDataParallel does not hang.
    """
    num_rois, num_keypoints, height, width = keypoint_logits.shape
    if height != width:
        raise ValueError(f"keypoint head: heatmaps must be square, got {height}x{width}")
    flat_valid = valid.reshape(-1)
    if not bool(flat_valid.any()):
        return keypoint_logits.sum() * 0.0
    logits = keypoint_logits.reshape(num_rois * num_keypoints, height * width)  # (P*K, S*S)
    return F.cross_entropy(logits[flat_valid], cells.reshape(-1)[flat_valid])
