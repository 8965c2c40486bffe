"""Mask R-CNN's mask targets and loss (He et al. 2017, Sec. 3, "L_mask").

For each positive RoI, the target is its matched ground-truth mask cropped to the RoI's proposal
box and resampled at M x M (`PolygonMasks.crop_and_resize` rasterizes the polygons in the box's
frame; `BitMasks.crop_and_resize` uses aligned RoIAlign on the bitmap, thresholded at 0.5). The
loss is the average binary cross-entropy over the M x M pixels of the logit map of the RoI's
ground-truth class only, so classes do not compete (L_mask).

Shapes: P positive RoIs (all images), K classes including the background, M the mask side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.per_image import required
from detector.structures.instances import Instances

__all__ = ["mask_rcnn_loss", "mask_rcnn_targets"]


def _image_targets(rois: Instances, targets: Instances, image: int, mask_size: int) -> Tensor:
    """Mask targets (P_i, M, M) of one image's positive RoIs."""
    for name, holder, owner in (
        ("proposal_boxes", rois, "instances"),
        ("matched_gt_idx", rois, "instances"),
        ("gt_masks", targets, "targets"),
    ):
        if not holder.has(name):
            raise ValueError(f"mask head (training): {owner}[{image}] has no {name}")
    gt_masks = required(targets.gt_masks, "gt_masks")
    matched = required(rois.matched_gt_idx, "matched_gt_idx")
    boxes = required(rois.proposal_boxes, "proposal_boxes")
    if len(matched) and (int(matched.max()) >= len(gt_masks) or int(matched.min()) < 0):
        raise IndexError(
            f"mask head: instances[{image}].matched_gt_idx points outside the {len(gt_masks)} "
            f"ground-truth masks of targets[{image}]"
        )
    return gt_masks.crop_and_resize(boxes.tensor, mask_size, indices=matched)


def mask_rcnn_targets(
    positive_rois: list[Instances], targets: list[Instances], mask_size: int
) -> tuple[Tensor, Tensor]:
    """The mask targets and classes of the positive RoIs of every image, concatenated.

    Args:
        positive_rois: per image, the foreground sampled RoIs (proposal_boxes, gt_classes > 0,
            matched_gt_idx: index into that image's targets).
        targets: per image, the ground truth with gt_masks (PolygonMasks or BitMasks).
        mask_size: M.

    Returns:
        mask_targets: Tensor[P, M, M] float32 of 0 and 1, on the RoIs' device;
        classes: Tensor[P] int64, the ground-truth class of each positive RoI.
    """
    if len(positive_rois) != len(targets):
        raise ValueError(
            f"mask head: {len(positive_rois)} images of RoIs but {len(targets)} targets"
        )
    per_image = [
        _image_targets(rois, image_targets, image, mask_size)
        for image, (rois, image_targets) in enumerate(zip(positive_rois, targets, strict=True))
    ]
    classes = [required(rois.gt_classes, "gt_classes") for rois in positive_rois]
    device = torch.device("cpu")
    if positive_rois:
        device = required(positive_rois[0].proposal_boxes, "proposal_boxes").device
    if not per_image:
        empty = torch.zeros(0, mask_size, mask_size, device=device)
        return empty, torch.zeros(0, dtype=torch.int64, device=device)
    mask_targets = torch.cat([t.to(device) for t in per_image], dim=0)
    return mask_targets, torch.cat(classes, dim=0).to(device)


def mask_rcnn_loss(mask_logits: Tensor, classes: Tensor, mask_targets: Tensor) -> Tensor:
    """L_mask: mean binary cross-entropy with logits on each RoI's ground-truth class channel.

    Args:
        mask_logits: Tensor[P, K, M, M] (K = 1 for class-agnostic masks).
        classes: Tensor[P] int64 classes in 1..K-1 (ignored when K = 1).
        mask_targets: Tensor[P, M, M] of 0 and 1.

    Returns:
        A scalar. Without positive RoIs, 0 computed from `mask_logits` (``sum() * 0``), so every
        parameter still receives a (zero) gradient and DistributedDataParallel does not hang.
    """
    if mask_targets.numel() == 0:
        return mask_logits.sum() * 0.0
    if mask_logits.shape[-2:] != mask_targets.shape[-2:]:
        raise ValueError(
            f"mask head: logits of size {tuple(mask_logits.shape[-2:])} but targets of size "
            f"{tuple(mask_targets.shape[-2:])} (MODEL.ROI_MASK_HEAD.RESOLUTION)"
        )
    if mask_logits.shape[1] == 1:
        class_logits = mask_logits[:, 0]  # (P, 1, M, M) -> (P, M, M)
    else:
        rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
        class_logits = mask_logits[rows, classes]  # (P, K, M, M) -> (P, M, M)
    return F.binary_cross_entropy_with_logits(
        class_logits, mask_targets.to(class_logits.dtype), reduction="mean"
    )
