"""The region proposal network: head, anchors, targets and losses (training), proposals.

Shapes:
    N: images, L: feature levels, A_l: anchors of level l over all its locations (H_l * W_l * A).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.modeling.anchor_generator import AnchorGenerator, build_anchor_generator
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.per_image import required
from detector.modeling.registry import RPN_HEADS
from detector.modeling.rpn.anchor_target_creator import AnchorTargetCreator
from detector.modeling.rpn.loss import flatten_level_outputs, rpn_losses
from detector.modeling.rpn.proposal_creator import ProposalCreator
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.structures import ImageList, Instances, as_size


class RPN(nn.Module):
    """Proposes boxes from backbone features; in training also returns its two losses."""

    def __init__(
        self,
        *,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        target_creator: AnchorTargetCreator,
        train_proposals: ProposalCreator,
        test_proposals: ProposalCreator,
        smooth_l1_beta: float = 1.0 / 9,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.target_creator = target_creator
        self.train_proposals = train_proposals
        self.test_proposals = test_proposals
        self.smooth_l1_beta = smooth_l1_beta

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> RPN:
        """Reads MODEL.RPN (anchors, matching, sampling, proposal counts, NMS, loss beta)."""
        rpn = cfg.MODEL.RPN
        anchor_generator = build_anchor_generator(cfg)
        num_anchors = anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"MODEL.RPN: the RPN head is shared across levels, so every level needs the same "
                f"number of anchors per location; got {num_anchors}"
            )
        head = RPN_HEADS.get(rpn.RPN_HEAD)(in_channels=in_channels, num_anchors=num_anchors[0])
        box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0), rpn.BBOX_XFORM_CLIP)
        target_creator = AnchorTargetCreator(
            matcher=Matcher(
                rpn.FG_IOU_THRESHOLD, rpn.BG_IOU_THRESHOLD, allow_low_quality_matches=True
            ),
            sampler=BalancedPositiveNegativeSampler(
                rpn.BATCH_SIZE_PER_IMAGE, rpn.POSITIVE_FRACTION
            ),
            box_coder=box_coder,
            straddle_thresh=rpn.STRADDLE_THRESH,
        )

        def proposal_creator(stage: str) -> ProposalCreator:
            return ProposalCreator(
                box_coder=box_coder,
                pre_nms_top_n=getattr(rpn, f"PRE_NMS_TOP_N_{stage}"),
                post_nms_top_n=getattr(rpn, f"POST_NMS_TOP_N_{stage}"),
                fpn_post_nms_top_n=getattr(rpn, f"FPN_POST_NMS_TOP_N_{stage}"),
                nms_thresh=rpn.NMS_THRESH,
                min_size=rpn.MIN_SIZE,
                # maskrcnn_benchmark ranks over the batch in training only
                fpn_post_nms_per_batch=rpn.FPN_POST_NMS_PER_BATCH and stage == "TRAIN",
            )

        return cls(
            head=head,
            anchor_generator=anchor_generator,
            target_creator=target_creator,
            train_proposals=proposal_creator("TRAIN"),
            test_proposals=proposal_creator("TEST"),
            smooth_l1_beta=rpn.SMOOTH_L1_BETA,
        )

    def forward(
        self,
        images: ImageList,
        features: list[Tensor],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Returns per-image proposals (`proposal_boxes`, `objectness_logits`) and the losses.

        Args:
            images: the padded batch (its `image_sizes` bound the proposals).
            features: per level (N, C, H_l, W_l).
            targets: per image Instances with `gt_boxes`; needed in training.
        """
        logits, deltas = self.head(features)
        input_size = (as_size(images.tensor.shape[-2]), as_size(images.tensor.shape[-1]))
        anchors = self.anchor_generator(features, input_size)  # per level (A_l, 4)
        flat_logits, flat_deltas = flatten_level_outputs(logits, deltas)
        creator = self.train_proposals if self.training else self.test_proposals
        # image sizes may be symbolic or traced (as_size), used as ints
        sizes = images.image_sizes
        proposals = creator(anchors, flat_logits, flat_deltas, sizes)  # pyright: ignore[reportArgumentType]
        if not self.training:
            return proposals, {}
        if targets is None:
            raise ValueError("RPN: `targets` (gt_boxes per image) are needed in training")
        return proposals, self._losses(anchors, flat_logits, flat_deltas, images, targets)

    def _losses(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        images: ImageList,
        targets: list[Instances],
    ) -> dict[str, Tensor]:
        all_anchors = torch.cat(anchors)  # (sum A_l, 4)
        labels: list[Tensor] = []  # per image (sum A_l,)
        regression_targets: list[Tensor] = []  # per image (sum A_l, 4)
        for image_size, target in zip(images.image_sizes, targets, strict=True):
            gt_boxes = required(target.gt_boxes, "gt_boxes").tensor.to(all_anchors.dtype)
            image_labels, image_targets = self.target_creator(all_anchors, gt_boxes, image_size)  # pyright: ignore[reportArgumentType] (as_size sizes)
            labels.append(image_labels)
            regression_targets.append(image_targets)
        return rpn_losses(
            torch.cat(logits, dim=1),  # (N, sum A_l)
            torch.cat(deltas, dim=1),  # (N, sum A_l, 4)
            torch.stack(labels),
            torch.stack(regression_targets),
            self.smooth_l1_beta,
        )
