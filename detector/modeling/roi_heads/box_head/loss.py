"""Fast R-CNN losses (Girshick 2015, eq. 1) over the sampled RoIs of a batch.

Shape glossary: R sampled RoIs (all images), K classes (background included).

    loss_classifier = cross-entropy(class_logits, gt_classes), mean over the R RoIs
    loss_box_reg    = sum over foreground RoIs of smooth_l1(deltas of the gt class - targets) / R

The box loss is normalized by the number of sampled RoIs, not of foreground RoIs, as
maskrcnn_benchmark and torchvision's fastrcnn_loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fast_rcnn_losses", "select_class_deltas"]


def select_class_deltas(
    box_deltas: Tensor, classes: Tensor, cls_agnostic_bbox_reg: bool = False
) -> Tensor:
    """The deltas ``(R', 4)`` of class `classes[i]` for each row of `box_deltas` ``(R', 4*B)``.

    With `cls_agnostic_bbox_reg` the last 4 columns (the foreground regressor) are taken.
    """
    if cls_agnostic_bbox_reg:
        return box_deltas[:, -4:]
    rows = torch.arange(box_deltas.size(0), device=box_deltas.device)
    return box_deltas.view(box_deltas.size(0), -1, 4)[rows, classes]  # (R', B, 4) -> (R', 4)


def fast_rcnn_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    gt_classes: Tensor,
    regression_targets: Tensor,
    smooth_l1_beta: float = 1.0,
    cls_agnostic_bbox_reg: bool = False,
) -> dict[str, Tensor]:
    """The two losses of the box head.

    Args:
        class_logits: ``(R, K)``.
        box_deltas: ``(R, 4*K)`` (or ``(R, 4*B)`` class-agnostic, see `select_class_deltas`).
        gt_classes: ``(R,)`` int64, 0 background.
        regression_targets: ``(R, 4)`` encoded targets (rows of background RoIs are unused).
        smooth_l1_beta: MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA (0 gives an L1 loss).

    Returns:
        {"loss_classifier", "loss_box_reg"}, scalars; 0 (with gradients) when R = 0.
    """
    num_rois = gt_classes.numel()
    if num_rois == 0:
        zero = class_logits.sum() * 0.0 + box_deltas.sum() * 0.0
        return {"loss_classifier": zero, "loss_box_reg": zero.clone()}
    loss_classifier = F.cross_entropy(class_logits.float(), gt_classes)
    foreground = torch.nonzero(gt_classes > 0).squeeze(1)
    deltas = select_class_deltas(
        box_deltas[foreground].float(), gt_classes[foreground], cls_agnostic_bbox_reg
    )
    loss_box_reg = F.smooth_l1_loss(
        deltas, regression_targets[foreground].float(), beta=smooth_l1_beta, reduction="sum"
    )
    return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg / num_rois}
