"""The RoI heads of Faster R-CNN / R-FCN (and the hooks of Mask and Keypoint R-CNN's heads).

Shape glossary: N images, R RoIs over the batch (image order), K classes (background included),
S the pooled size.

Training: ProposalTargetCreator samples RoIs from the proposals (gt boxes added) ->
box head -> loss_classifier, loss_box_reg (-> mask head on the same RoIs when MASK_ON, keypoint
head when KEYPOINT_ON). Inference: every proposal -> box head -> BoxPostProcessor -> detections
(-> masks, keypoints).

The box head comes in two shapes:

    Fast R-CNN:  pooler(features, rois) (R, C, S, S) -> feature extractor -> predictor
    R-FCN:       predictor(features, rois): score maps over the image, position-sensitive
                 pooling from those maps, votes. No pooler or feature extractor of its own
                 (`box_pooler` and `box_feature_extractor` are None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.modeling.box_coder import BoxCoder
from detector.modeling.per_image import required
from detector.modeling.registry import ROI_BOX_PREDICTORS
from detector.modeling.roi_heads.box_head import (
    BoxPostProcessor,
    build_box_feature_extractor,
    build_box_predictor,
    fast_rcnn_losses,
)
from detector.modeling.roi_heads.poolers import Pooler, build_pooler
from detector.modeling.roi_heads.proposal_target_creator import ProposalTargetCreator
from detector.structures import Boxes, Instances

if TYPE_CHECKING:
    from detector.modeling.roi_heads.keypoint_head import KeypointHead
    from detector.modeling.roi_heads.mask_head import MaskHead

__all__ = ["RoIHeads", "build_roi_heads"]


class RoIHeads(nn.Module):
    """Box head (and optional mask head) on RoIs of the proposals.

    Args:
        target_creator: samples training RoIs and their targets.
        box_pooler: pools RoI features (None for an R-FCN predictor, which pools itself).
        box_feature_extractor: pooled features -> per-RoI features (None for R-FCN).
        box_predictor: -> class logits (R, K) and box deltas (R, 4*K).
        post_processor: logits and deltas -> detections.
        smooth_l1_beta: of the box regression loss.
        cls_agnostic_bbox_reg: one box regressor for all classes.
        mask_head: ``mask_head(features, instances, targets=None, box_features=None)
            -> (list[Instances], dict)``, or None.
        keypoint_head: ``keypoint_head(features, instances, targets=None)
            -> (list[Instances], dict)``, or None.
    """

    def __init__(
        self,
        *,
        target_creator: ProposalTargetCreator,
        box_pooler: Pooler | None,
        box_feature_extractor: nn.Module | None,
        box_predictor: nn.Module,
        post_processor: BoxPostProcessor,
        smooth_l1_beta: float = 1.0,
        cls_agnostic_bbox_reg: bool = False,
        mask_head: MaskHead | None = None,
        keypoint_head: KeypointHead | None = None,
    ) -> None:
        super().__init__()
        if getattr(box_predictor, "pools_own_maps", False) != (box_pooler is None):
            raise ValueError(
                "RoIHeads: an R-FCN predictor (MODEL.ROI_BOX_HEAD.PREDICTOR RFCNPredictor) pools "
                "its own score maps and takes no box pooler; every other predictor needs one"
            )
        self.target_creator = target_creator
        self.box_pooler = box_pooler
        self.box_feature_extractor = box_feature_extractor
        self.box_predictor = box_predictor
        self.post_processor = post_processor
        self.smooth_l1_beta = smooth_l1_beta
        self.cls_agnostic_bbox_reg = cls_agnostic_bbox_reg
        self.mask_head = mask_head
        self.keypoint_head = keypoint_head

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> RoIHeads:
        """Reads MODEL.ROI_HEADS, MODEL.ROI_BOX_HEAD and (MASK_ON) the mask head's builder.

        Args:
            in_channels: channels of the backbone's feature maps.
        """
        heads, box_head = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
        box_pooler, box_feature_extractor, box_predictor = _build_box_head(cfg, in_channels)
        agnostic = heads.CLS_AGNOSTIC_BBOX_REG
        post_processor = BoxPostProcessor(
            box_coder=BoxCoder(tuple(heads.BBOX_REG_WEIGHTS), heads.BBOX_XFORM_CLIP),
            score_thresh=heads.SCORE_THRESH,
            nms_thresh=heads.NMS,
            detections_per_img=heads.DETECTIONS_PER_IMG,
            cls_agnostic_bbox_reg=agnostic,
        )
        mask_head = None
        if cfg.MODEL.MASK_ON:
            if box_feature_extractor is None:
                raise ValueError(
                    "MODEL.MASK_ON: the R-FCN box head (RFCNPredictor) has no mask head"
                )
            from detector.modeling.roi_heads.mask_head import build_mask_head

            mask_head = build_mask_head(
                cfg, in_channels=in_channels, box_feature_extractor=box_feature_extractor
            )
        keypoint_head = None
        if cfg.MODEL.KEYPOINT_ON:
            from detector.modeling.roi_heads.keypoint_head import build_keypoint_head

            keypoint_head = build_keypoint_head(cfg, in_channels)
        return cls(
            target_creator=ProposalTargetCreator.from_config(cfg),
            box_pooler=box_pooler,
            box_feature_extractor=box_feature_extractor,
            box_predictor=box_predictor,
            post_processor=post_processor,
            smooth_l1_beta=box_head.SMOOTH_L1_BETA,
            cls_agnostic_bbox_reg=agnostic,
            mask_head=mask_head,
            keypoint_head=keypoint_head,
        )

    def forward(
        self,
        features: list[Tensor],
        proposals: list[Instances],
        image_sizes: list[tuple[int, int]],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Training: (sampled RoIs, losses); inference: (detections, {}).

        Args:
            features: backbone maps ``(N, C, H_l, W_l)``, finest first.
            proposals: per image Instances with `proposal_boxes`.
            image_sizes: per image (height, width) of the network input.
            targets: per image `gt_boxes`, `gt_classes` (and `gt_masks`, `gt_keypoints`);
                training only.
        """
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads: `targets` are needed in training mode")
            proposals = self.target_creator(proposals, targets)
        instances, losses, box_features = self._forward_box(features, proposals, image_sizes)
        if self.mask_head is not None:
            instances, mask_losses = self._forward_mask(features, instances, targets, box_features)
            losses.update(mask_losses)
        if self.keypoint_head is not None:
            instances, keypoint_losses = self.keypoint_head(
                features, instances, targets if self.training else None
            )
            losses.update(keypoint_losses)
        return instances, losses

    def candidates(self, features: list[Tensor], boxes: list[Boxes]) -> list[tuple[Tensor, Tensor]]:
        """Inference before any filtering: per image, the decoded boxes of every class
        (R_i, 4*K) and the class probabilities (R_i, K) of its RoIs `boxes`."""
        _, class_logits, box_deltas = self._box_outputs(features, boxes)
        return self.post_processor.candidates(class_logits, box_deltas, boxes)

    def _box_outputs(
        self, features: list[Tensor], boxes: list[Boxes]
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """(box features or None for R-FCN, class logits (R, K), box deltas (R, 4*K))."""
        if self.box_pooler is None:  # R-FCN: the predictor pools from its own score maps
            class_logits, box_deltas = self.box_predictor(features, boxes)
            return None, class_logits, box_deltas
        assert self.box_feature_extractor is not None  # set with the pooler
        pooled = self.box_pooler(features, boxes)  # (R, C, S, S)
        box_features = self.box_feature_extractor(pooled)
        class_logits, box_deltas = self.box_predictor(box_features)
        return box_features, class_logits, box_deltas

    def _forward_box(
        self, features: list[Tensor], rois: list[Instances], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Instances], dict[str, Tensor], Tensor | None]:
        """Training: (rois, box losses, box features); inference: (detections, {}, None)."""
        boxes = [required(r.proposal_boxes, "proposal_boxes") for r in rois]
        box_features, class_logits, box_deltas = self._box_outputs(features, boxes)
        if not self.training:
            detections = self.post_processor(class_logits, box_deltas, boxes, image_sizes)
            return detections, {}, None
        gt_classes = torch.cat([required(r.gt_classes, "gt_classes") for r in rois])  # (R,)
        regression_targets = torch.cat([self.target_creator.encode(r) for r in rois])  # (R, 4)
        losses = fast_rcnn_losses(
            class_logits,
            box_deltas,
            gt_classes,
            regression_targets,
            self.smooth_l1_beta,
            self.cls_agnostic_bbox_reg,
        )
        return rois, losses, box_features

    def _forward_mask(
        self,
        features: list[Tensor],
        instances: list[Instances],
        targets: list[Instances] | None,
        box_features: Tensor | None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Training: the sampled RoIs (the mask head keeps gt_classes > 0) and the box features
        of all of them; inference: the detections, to which it adds `pred_masks`."""
        assert self.mask_head is not None  # called only then
        if self.training:
            return self.mask_head(features, instances, targets=targets, box_features=box_features)
        return self.mask_head(features, instances)


def _build_box_head(
    cfg: Config, in_channels: int
) -> tuple[Pooler | None, nn.Module | None, nn.Module]:
    """(pooler, feature extractor, predictor) of MODEL.ROI_BOX_HEAD; (None, None, predictor)
    for a predictor that pools its own maps (R-FCN)."""
    box_head = cfg.MODEL.ROI_BOX_HEAD
    predictor_name = str(box_head.PREDICTOR)
    if getattr(ROI_BOX_PREDICTORS.get(predictor_name), "pools_own_maps", False):
        return None, None, build_box_predictor(cfg, in_channels)
    box_pooler = build_pooler(box_head, in_channels=in_channels)
    if box_pooler.position_sensitive:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.POOLER_TYPE {box_head.POOLER_TYPE} is position-sensitive: it "
            f"needs PREDICTOR RFCNPredictor, not {predictor_name}"
        )
    box_feature_extractor = build_box_feature_extractor(cfg, in_channels)
    box_predictor = build_box_predictor(cfg, cast(int, box_feature_extractor.out_channels))
    return box_pooler, box_feature_extractor, box_predictor


def build_roi_heads(cfg: Config, backbone: nn.Module) -> RoIHeads:
    """The RoI heads for `backbone` (its `out_channels` are the pooled features' channels)."""
    return RoIHeads.from_config(cfg, cast(int, backbone.out_channels))
