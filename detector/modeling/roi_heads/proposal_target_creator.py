"""Training RoIs for the box head: Fast R-CNN's sampling of proposals (Girshick 2015, Sec. 2.3).

Shape glossary: P proposals of one image, G ground-truth boxes of that image, S sampled RoIs
(at most BATCH_SIZE_PER_IMAGE per image).

For each image the ground-truth boxes are appended to the proposals (so every gt has at least
one perfect RoI), every RoI is matched to its best ground truth by IoU, and a class-balanced
subset is drawn:

    foreground  IoU >= FG_IOU_THRESHOLD                         gt_classes = matched gt's class
    background  BG_IOU_THRESHOLD_LO <= IoU < BG_IOU_THRESHOLD   gt_classes = 0
    ignored     anything else (never sampled)

At most BATCH_SIZE_PER_IMAGE * POSITIVE_FRACTION foreground RoIs are drawn and background fills
the rest. The result keeps the proposals' order (foreground and background interleaved).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detector.config import Config
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.per_image import required
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.structures import Boxes, Instances, pairwise_iou

__all__ = ["ProposalTargetCreator"]

IGNORED = -1  # label of RoIs that are neither foreground nor background


class ProposalTargetCreator:
    """Samples training RoIs from the proposals and assigns them their targets.

    Args:
        matcher: foreground / background split by IoU (Matcher(FG, BG, no low-quality matches)).
        sampler: BATCH_SIZE_PER_IMAGE RoIs per image, at most POSITIVE_FRACTION foreground.
        box_coder: encodes regression targets (BBOX_REG_WEIGHTS, (10, 10, 5, 5)).
        bg_iou_threshold_lo: RoIs whose best IoU is below this are ignored, not background.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        box_coder: BoxCoder,
        bg_iou_threshold_lo: float = 0.0,
    ) -> None:
        self.matcher = matcher
        self.sampler = sampler
        self.box_coder = box_coder
        self.bg_iou_threshold_lo = bg_iou_threshold_lo

    @classmethod
    def from_config(cls, cfg: Config) -> ProposalTargetCreator:
        """Reads MODEL.ROI_HEADS (FG/BG IoU thresholds, batch size, fraction, box weights)."""
        heads = cfg.MODEL.ROI_HEADS
        return cls(
            matcher=Matcher(
                heads.FG_IOU_THRESHOLD,
                heads.BG_IOU_THRESHOLD,
                allow_low_quality_matches=False,
            ),
            sampler=BalancedPositiveNegativeSampler(
                heads.BATCH_SIZE_PER_IMAGE, heads.POSITIVE_FRACTION
            ),
            box_coder=BoxCoder(tuple(heads.BBOX_REG_WEIGHTS), heads.BBOX_XFORM_CLIP),
            bg_iou_threshold_lo=heads.BG_IOU_THRESHOLD_LO,
        )

    def __call__(
        self,
        proposals: Sequence[Instances],
        targets: Sequence[Instances],
        generator: torch.Generator | None = None,
    ) -> list[Instances]:
        """Sampled RoIs of every image.

        Args:
            proposals: per image Instances with `proposal_boxes` (P boxes).
            targets: per image Instances with `gt_boxes` (G boxes, G may be 0) and `gt_classes`.
            generator: makes the sampling reproducible.

        Returns:
            per image Instances of S RoIs with `proposal_boxes`, `gt_classes` (0: background),
            `gt_boxes` (the matched ground truth; the RoI itself for background, so its
            regression target is 0) and `matched_gt_idx` (index into that image's targets;
            -1 for background).
        """
        if len(proposals) != len(targets):
            raise ValueError(
                f"ProposalTargetCreator: {len(proposals)} images of proposals but "
                f"{len(targets)} of targets"
            )
        labels: list[Tensor] = []  # per image (P_i + G_i,)
        matched_idxs: list[Tensor] = []
        all_boxes: list[Tensor] = []  # per image (P_i + G_i, 4)
        for image_proposals, image_targets in zip(proposals, targets, strict=True):
            boxes = _with_gt_boxes(image_proposals, image_targets)
            image_labels, image_matches = self._label(boxes, image_targets)
            labels.append(image_labels)
            matched_idxs.append(image_matches)
            all_boxes.append(boxes)
        positive, negative = self.sampler(labels, generator=generator)
        return [
            self._sampled_rois(
                boxes, image_labels, image_matches, pos | neg, image_targets, p.image_size
            )
            for boxes, image_labels, image_matches, pos, neg, image_targets, p in zip(
                all_boxes, labels, matched_idxs, positive, negative, targets, proposals, strict=True
            )
        ]

    def encode(self, rois: Instances) -> Tensor:
        """Regression targets ``(S, 4)`` of sampled RoIs (their gt_boxes against the RoIs)."""
        gt_boxes = required(rois.gt_boxes, "gt_boxes")
        return self.box_coder.encode(
            gt_boxes.tensor, required(rois.proposal_boxes, "proposal_boxes").tensor
        )

    def _label(self, boxes: Tensor, targets: Instances) -> tuple[Tensor, Tensor]:
        """Per RoI ``(P+G,)``: class label (>= 1 fg, 0 bg, -1 ignored) and matched gt (-1 none)."""
        gt_boxes = required(targets.gt_boxes, "gt_boxes").tensor.to(boxes.dtype)
        iou = pairwise_iou(gt_boxes, boxes)  # (G, P+G)
        matches = self.matcher(iou)
        foreground = matches >= 0
        labels = torch.zeros_like(matches)
        gt_classes = required(targets.gt_classes, "gt_classes")
        labels[foreground] = gt_classes.to(boxes.device)[matches[foreground]]
        labels[matches == Matcher.BETWEEN_THRESHOLDS] = IGNORED
        if self.bg_iou_threshold_lo > 0:
            best_iou = iou.max(dim=0).values if len(gt_boxes) else torch.zeros_like(boxes[:, 0])
            too_low = (matches == Matcher.BELOW_LOW_THRESHOLD) & (
                best_iou < self.bg_iou_threshold_lo
            )
            labels[too_low] = IGNORED
        matches = torch.where(foreground, matches, torch.full_like(matches, -1))
        return labels, matches

    @staticmethod
    def _sampled_rois(
        boxes: Tensor,
        labels: Tensor,
        matches: Tensor,
        sampled: Tensor,
        targets: Instances,
        image_size: tuple[int, int],
    ) -> Instances:
        index = torch.nonzero(sampled).squeeze(1)
        boxes, labels, matches = boxes[index], labels[index], matches[index]
        gt_boxes = required(targets.gt_boxes, "gt_boxes").tensor.to(boxes.dtype)
        if len(gt_boxes):
            matched = gt_boxes[matches.clamp(min=0)]
            matched_boxes = torch.where((matches >= 0)[:, None], matched, boxes)
        else:
            matched_boxes = boxes.clone()
        return Instances(
            image_size,
            proposal_boxes=Boxes(boxes),
            gt_classes=labels,
            gt_boxes=Boxes(matched_boxes),
            matched_gt_idx=matches,
        )


def _with_gt_boxes(proposals: Instances, targets: Instances) -> Tensor:
    """The proposals ``(P, 4)`` followed by the ground-truth boxes ``(G, 4)``, detached."""
    proposal_boxes = required(proposals.proposal_boxes, "proposal_boxes").tensor.detach()
    gt_boxes = required(targets.gt_boxes, "gt_boxes").tensor.to(proposal_boxes)
    return torch.cat([proposal_boxes, gt_boxes], dim=0)
