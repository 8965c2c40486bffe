"""Box head inference: scores, per-class boxes, NMS (as torchvision's
RoIHeads.postprocess_detections, which it matches step by step).

Shape glossary: R RoIs of the batch, R_i of image i, K classes (background included).

Per image: softmax over the K logits; decode the deltas of every class against the RoI; clip to
the image; drop the background column; keep (box, class) pairs with score > SCORE_THRESH and
sides >= 0.01 px; per-class NMS at ROI_HEADS.NMS; keep the DETECTIONS_PER_IMG best.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detector import ops
from detector.modeling.box_coder import BoxCoder
from detector.modeling.per_image import split_rows
from detector.structures import Boxes, Instances, as_size

__all__ = ["BoxPostProcessor"]


class BoxPostProcessor:
    """Turns class logits and box deltas into detections.

    Args:
        box_coder: decodes the deltas (BBOX_REG_WEIGHTS).
        score_thresh: ROI_HEADS.SCORE_THRESH (strictly greater is kept).
        nms_thresh: ROI_HEADS.NMS IoU threshold.
        detections_per_img: ROI_HEADS.DETECTIONS_PER_IMG.
        min_size: smallest kept box side in pixels (torchvision's 1e-2).
        cls_agnostic_bbox_reg: the last 4 delta columns regress every class.
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        min_size: float = 1e-2,
        cls_agnostic_bbox_reg: bool = False,
    ) -> None:
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        self.cls_agnostic_bbox_reg = cls_agnostic_bbox_reg

    def __call__(
        self,
        class_logits: Tensor,
        box_deltas: Tensor,
        proposal_boxes: Sequence[Boxes],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Detections per image (`pred_boxes`, `scores`, `pred_classes` in 1..K-1).

        Args:
            class_logits: ``(R, K)``.
            box_deltas: ``(R, 4*K)`` or class-agnostic ``(R, 4*B)``.
            proposal_boxes: per image the R_i RoIs, in the order of the rows.
            image_sizes: per image (height, width) to clip to.
        """
        return [
            self.detections(image_boxes, image_scores, image_size)
            for (image_boxes, image_scores), image_size in zip(
                self.candidates(class_logits, box_deltas, proposal_boxes), image_sizes, strict=True
            )
        ]

    def candidates(
        self, class_logits: Tensor, box_deltas: Tensor, proposal_boxes: Sequence[Boxes]
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, before any filtering: the decoded boxes of every class ``(R_i, 4*K)``
        (not clipped) and the class probabilities ``(R_i, K)``."""
        num_classes = class_logits.size(1)
        class_logits, box_deltas = class_logits.float(), box_deltas.float()
        if self.cls_agnostic_bbox_reg:
            box_deltas = box_deltas[:, -4:].repeat(1, num_classes)  # (R, 4) -> (R, 4*K)
        rois = torch.cat([b.tensor for b in proposal_boxes]).to(box_deltas.dtype)
        pred_boxes = self.box_coder.decode(box_deltas, rois)  # (R, 4*K)
        scores = F.softmax(class_logits, dim=-1)  # (R, K)
        counts = [as_size(b.tensor.shape[0]) for b in proposal_boxes]  # R_i, maybe symbolic
        return list(zip(split_rows(pred_boxes, counts), split_rows(scores, counts), strict=True))

    def detections(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> Instances:
        """One image: boxes ``(R_i, 4*K)``, scores ``(R_i, K)`` -> kept detections."""
        num_rois, num_classes = scores.shape
        boxes = Boxes(boxes.reshape(-1, 4)).clip(image_size).tensor  # (R_i*K, 4)
        boxes = boxes.view(num_rois, num_classes, 4)[:, 1:].reshape(-1, 4)  # drop background
        labels = torch.arange(num_classes, device=scores.device).expand(num_rois, num_classes)
        labels = labels[:, 1:].reshape(-1)  # (R_i*(K-1),), row-major over (RoI, class)
        scores = scores[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > self.score_thresh).squeeze(1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = torch.nonzero((widths >= self.min_size) & (heights >= self.min_size)).squeeze(1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return Instances(
            image_size,
            pred_boxes=Boxes(boxes[keep]),
            scores=scores[keep],
            pred_classes=labels[keep],
        )
