"""Box regression targets: the Fast R-CNN parametrization (Girshick, 2015, eq. 6-9), no "+1".

Shape glossary: M boxes; K boxes predicted per reference box (e.g. one per class).

    tx = wx * (gx - px) / pw      ty = wy * (gy - py) / ph
    tw = ww * log(gw / pw)        th = wh * log(gh / ph)

with (px, py, pw, ph) the centre and size of the reference box (anchor or proposal) and g the
ground truth. As torchvision.models.detection._utils.BoxCoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encodes ground truth against reference boxes and decodes predicted deltas.

    Args:
        weights: (wx, wy, ww, wh), e.g. (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
        bbox_xform_clip: the largest tw / th used in decoding, log(1000 / 16) by default.
    """

    def __init__(
        self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: weights need 4 values (wx, wy, ww, wh), got {weights}")
        if not bbox_xform_clip > 0:
            raise ValueError(f"BoxCoder: bbox_xform_clip must be > 0, got {bbox_xform_clip}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt_boxes: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``(M, 4)`` that turn `boxes` ``(M, 4)`` into `gt_boxes` ``(M, 4)``."""
        wx, wy, ww, wh = self.weights
        ctr_x, ctr_y, widths, heights = _centres_and_sizes(boxes)
        gt_ctr_x, gt_ctr_y, gt_widths, gt_heights = _centres_and_sizes(gt_boxes)
        deltas = torch.stack(
            [
                wx * (gt_ctr_x - ctr_x) / widths,
                wy * (gt_ctr_y - ctr_y) / heights,
                ww * torch.log(gt_widths / widths),
                wh * torch.log(gt_heights / heights),
            ],
            dim=1,
        )
        return deltas

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Boxes ``(M, K*4)`` from deltas ``(M, K*4)`` applied to reference `boxes` ``(M, 4)``."""
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ctr_x, ctr_y, widths, heights = _centres_and_sizes(boxes)
        # (M, K*4) -> four (M, K) views
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * torch.exp(dw) * widths[:, None]
        half_h = 0.5 * torch.exp(dh) * heights[:, None]
        pred = torch.stack(
            [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h],
            dim=2,
        )
        # (M, K, 4) -> (M, K*4)
        return pred.reshape(deltas.shape)
