"""ProposalCreator: turns RPN outputs into proposals (decode, clip, drop small, top-k, NMS, top-N).

Shapes:
    N: images, L: levels, A_l: anchors of level l over all its locations (H_l * W_l * A),
    k: proposals kept before NMS on a level, P: proposals returned for an image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.modeling.box_coder import BoxCoder
from detector.modeling.per_image import required, split_rows
from detector.ops import nms
from detector.structures import Boxes, Instances, as_size, size_min


class ProposalCreator:
    """Selects proposals level by level, then across levels, as maskrcnn_benchmark does.

    Per image and level: the `pre_nms_top_n` highest-scoring anchors are decoded, clipped to the
    image, boxes narrower or shorter than `min_size` dropped, NMS at `nms_thresh`, and at most
    `post_nms_top_n` kept. With several levels (FPN), the `fpn_post_nms_top_n` best over all levels
    are kept per image, or over the whole batch when `fpn_post_nms_per_batch` (maskrcnn_benchmark's
    training behaviour).
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder,
        pre_nms_top_n: int,
        post_nms_top_n: int,
        fpn_post_nms_top_n: int,
        nms_thresh: float,
        min_size: float,
        fpn_post_nms_per_batch: bool = False,
    ) -> None:
        self.box_coder = box_coder
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.fpn_post_nms_top_n = fpn_post_nms_top_n
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.fpn_post_nms_per_batch = fpn_post_nms_per_batch

    @torch.no_grad()
    def __call__(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Instances]:
        """Args: per level, anchors (A_l, 4), logits (N, A_l), deltas (N, A_l, 4).

        Returns per image Instances with `proposal_boxes` (P, 4) and `objectness_logits` (P,),
        sorted by decreasing objectness.
        """
        # Decoding and NMS run in float32 even under autocast (bf16 boxes lose whole pixels).
        per_level = [
            self._select_level(a.float(), lg.detach().float(), d.detach().float(), image_sizes)
            for a, lg, d in zip(anchors, logits, deltas, strict=True)
        ]
        per_image = [
            Instances.cat([level[i] for level in per_level]) for i in range(len(image_sizes))
        ]
        if len(anchors) == 1:
            return per_image
        if self.fpn_post_nms_per_batch:
            return self._top_n_over_batch(per_image)
        return [self._top_n(p, self.fpn_post_nms_top_n) for p in per_image]

    def _select_level(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[Instances]:
        k = size_min(self.pre_nms_top_n, as_size(logits.shape[1]))  # no guard on a traced A_l
        top_logits, top_idx = logits.topk(k, dim=1, sorted=True)  # (N, k)
        results: list[Instances] = []
        for i, image_size in enumerate(image_sizes):
            idx = top_idx[i]
            boxes = self.box_coder.decode(deltas[i, idx], anchors[idx])  # (k, 4)
            boxes = Boxes(boxes).clip(image_size).tensor
            scores = top_logits[i]
            keep = _nonsmall(boxes, self.min_size)
            boxes, scores = boxes[keep], scores[keep]
            keep = nms(boxes, scores, self.nms_thresh)[: self.post_nms_top_n]
            results.append(
                Instances(
                    image_size, proposal_boxes=Boxes(boxes[keep]), objectness_logits=scores[keep]
                )
            )
        return results

    @staticmethod
    def _top_n(proposals: Instances, n: int) -> Instances:
        """The `n` proposals of highest objectness, sorted."""
        n = size_min(n, proposals.num_instances)  # stays symbolic when traced
        logits = required(proposals.objectness_logits, "objectness_logits")
        return proposals[logits.topk(n, sorted=True).indices]

    def _top_n_over_batch(self, proposals: list[Instances]) -> list[Instances]:
        """Keeps the `fpn_post_nms_top_n` best proposals of the whole batch."""
        counts = [len(p) for p in proposals]
        logits = torch.cat([required(p.objectness_logits, "objectness_logits") for p in proposals])
        n = min(self.fpn_post_nms_top_n, logits.numel())
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[logits.topk(n, sorted=True).indices] = True
        kept = split_rows(keep, counts)
        return [self._top_n(p[m], int(m.sum())) for p, m in zip(proposals, kept, strict=True)]


def _nonsmall(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes at least `min_size` wide and high."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]
