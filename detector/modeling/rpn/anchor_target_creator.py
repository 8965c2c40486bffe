"""AnchorTargetCreator: labels and regression targets for the RPN's anchors of one image.

Shapes:
    A: anchors of an image over all levels, G: ground-truth boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.modeling.anchor_generator import anchor_visibility
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.structures import pairwise_iou

#: anchor labels: sampled positive, sampled negative, ignored (not sampled or invisible)
POSITIVE, NEGATIVE, IGNORE = 1.0, 0.0, -1.0


class AnchorTargetCreator:
    """Matches anchors to ground truth by IoU and samples a balanced minibatch of them.

    Anchors with IoU >= the matcher's high threshold (or the best anchor of a ground-truth box, with
    low-quality matches) are positive, below the low threshold negative, the rest ignored; anchors
    crossing the image border by more than `straddle_thresh` pixels are ignored (a negative value
    keeps them all). `sampler` then keeps e.g. 256 anchors with at most half positive.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        box_coder: BoxCoder,
        straddle_thresh: float = 0.0,
    ) -> None:
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = box_coder
        self.straddle_thresh = straddle_thresh

    @torch.no_grad()
    def __call__(
        self, anchors: Tensor, gt_boxes: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Returns labels (A,) in {1, 0, -1} and regression targets (A, 4)."""
        labels = torch.full((anchors.shape[0],), IGNORE, device=anchors.device)
        targets = torch.zeros_like(anchors)
        if gt_boxes.numel() == 0:
            labels.fill_(NEGATIVE)
        else:
            matched = self.matcher(pairwise_iou(gt_boxes, anchors))  # (A,)
            labels[matched >= 0] = POSITIVE
            labels[matched == Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
            targets = self.box_coder.encode(gt_boxes[matched.clamp(min=0)], anchors)
        labels[~anchor_visibility(anchors, image_size, self.straddle_thresh)] = IGNORE
        return self._sample(labels), targets

    def _sample(self, labels: Tensor) -> Tensor:
        (positive,), (negative,) = self.sampler([labels])  # bool masks (A,)
        sampled = torch.full_like(labels, IGNORE)
        sampled[positive] = POSITIVE
        sampled[negative] = NEGATIVE
        return sampled
