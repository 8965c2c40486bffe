"""The Mask R-CNN mask head (He et al. 2017): RoI features -> per-class M x M mask logits.

    pooler(features, boxes)            (R, C, S, S)      S = POOLER_RESOLUTION (14)
    feature_extractor                  (R, C', S', S')   FPN: 4 convs, S' = S; C4: res5, S' = S / 2
    predictor                          (R, K, M, M)      M = 2 S' = RESOLUTION (28 FPN, 14 C4)

Training runs on the foreground sampled RoIs (gt_classes > 0) and returns {"loss_mask"}; with a
C4 box head shared with the mask head (MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR, as in
maskrcnn_benchmark) the box head's res5 features of those RoIs are reused instead of pooling again.

Inference adds `pred_masks` to every detection: Tensor[R, 1, M, M] float, the sigmoid
probabilities of the predicted class's mask in box coordinates.
`detector.modeling.postprocessing.detector_postprocess` pastes them into the original image.

Shapes: N images, R RoIs (all images), P positive RoIs, C channels, K classes including the
background, M the mask side, (H, W) an image.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.modeling.per_image import required, split_rows
from detector.modeling.registry import ROI_MASK_HEADS
from detector.modeling.roi_heads.mask_head import feature_extractors  # noqa: F401  # pyright: ignore[reportUnusedImport] (registers)
from detector.modeling.roi_heads.mask_head.feature_extractors import (
    MaskRCNNC4FeatureExtractor,
    res5_stride,
)
from detector.modeling.roi_heads.mask_head.loss import mask_rcnn_loss, mask_rcnn_targets
from detector.modeling.roi_heads.mask_head.predictors import ROI_MASK_PREDICTORS
from detector.structures.boxes import Boxes
from detector.structures.instances import Instances
from detector.structures.sizes import known_equal

__all__ = ["MaskHead", "build_mask_head", "mask_probabilities"]

logger = logging.getLogger(__name__)

C4_BOX_FEATURE_EXTRACTOR = "ResNet50Conv5ROIFeatureExtractor"


def mask_probabilities(mask_logits: Tensor, classes: Tensor) -> Tensor:
    """The sigmoid of each RoI's mask logits for its class.

    Args:
        mask_logits: Tensor[R, K, M, M] (K = 1 for class-agnostic masks).
        classes: Tensor[R] int64 predicted classes (ignored when K = 1).

    Returns:
        Tensor[R, 1, M, M] probabilities.
    """
    if mask_logits.shape[1] == 1:
        return mask_logits.sigmoid()
    rows = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[rows, classes][:, None].sigmoid()  # (R, K, M, M) -> (R, 1, M, M)


class MaskHead(nn.Module):
    """Mask R-CNN's mask branch: pooler -> feature extractor -> predictor, loss and inference.

    Args:
        pooler: ``pooler(features: list[Tensor], boxes: list[Boxes]) -> Tensor[R, C, S, S]``
            (must accept images without boxes).
        feature_extractor: ``(R, C, S, S) -> (R, C', S', S')``.
        predictor: ``(R, C', S', S') -> (R, K, M, M)`` mask logits; one with a true
            `selects_classes` attribute is called as ``predictor(x, classes)`` with each RoI's
            class (Tensor[R]) and may return only those logits, (R, 1, M, M).
        mask_size: M, the side of the logits and of the mask targets (RESOLUTION).
        share_box_features: in training, take the positive RoIs' features from the
            `box_features` given to `forward` (the box head's res5 output on all sampled RoIs,
            a C4 head shared with this one) instead of pooling and extracting again.
    """

    def __init__(
        self,
        *,
        pooler: nn.Module,
        feature_extractor: nn.Module,
        predictor: nn.Module,
        mask_size: int,
        share_box_features: bool = False,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.feature_extractor = feature_extractor
        self.predictor = predictor
        self.mask_size = mask_size
        self.share_box_features = share_box_features

    def forward(
        self,
        features: list[Tensor],
        instances: list[Instances],
        targets: list[Instances] | None = None,
        box_features: Tensor | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Training: `instances` are the sampled RoIs (proposal_boxes, gt_classes with 0 for the
        background, matched_gt_idx into `targets`), returned as given, with {"loss_mask"}.
        Inference: `instances` are detections (pred_boxes, pred_classes), returned as new
        Instances with `pred_masks`, and {}.

        Args:
            features: the pooled feature maps, each (N, C, H_l, W_l).
            instances: per image, sampled RoIs (training) or detections (inference).
            targets: per image, the ground truth with gt_masks (training only).
            box_features: Tensor[R_all, C', S', S'], the box feature extractor's output on all
                sampled RoIs in image order (training, shared C4 head only; else ignored).
        """
        if self.training:
            loss_mask = self._forward_train(features, instances, targets, box_features)
            return instances, {"loss_mask": loss_mask}
        return self._forward_inference(features, instances), {}

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------
    def _forward_train(
        self,
        features: list[Tensor],
        instances: list[Instances],
        targets: list[Instances] | None,
        box_features: Tensor | None,
    ) -> Tensor:
        if targets is None:
            raise ValueError("mask head: training needs `targets` with gt_masks")
        for image, rois in enumerate(instances):
            if not rois.has("gt_classes"):
                raise ValueError(f"mask head (training): instances[{image}] has no gt_classes")
        foreground = [required(rois.gt_classes, "gt_classes") > 0 for rois in instances]
        positive_rois = [rois[fg] for rois, fg in zip(instances, foreground, strict=True)]
        if self.share_box_features and box_features is not None:
            mask_features = self._shared_features(box_features, foreground)
        else:
            mask_features = self._mask_features(
                features,
                [required(rois.proposal_boxes, "proposal_boxes") for rois in positive_rois],
            )
        mask_targets, classes = mask_rcnn_targets(positive_rois, targets, self.mask_size)
        mask_logits = self._predict(mask_features, classes)  # (P, K or 1, M, M)
        return mask_rcnn_loss(mask_logits, classes, mask_targets)

    @staticmethod
    def _shared_features(box_features: Tensor, foreground: list[Tensor]) -> Tensor:
        """The rows of `box_features` (all sampled RoIs, image order) of the positive RoIs."""
        fg = torch.cat(foreground)  # (R_all,) bool
        if box_features.dim() != 4 or box_features.shape[0] != fg.numel():
            raise ValueError(
                f"mask head: box_features must be (R, C, S, S) for the {fg.numel()} sampled RoIs "
                f"(the box head's res5 output before pooling), got {tuple(box_features.shape)}"
            )
        return box_features[fg.to(box_features.device)]  # (R_all, ...) -> (P, ...)

    # ----------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------
    def _forward_inference(
        self, features: list[Tensor], detections: list[Instances]
    ) -> list[Instances]:
        for image, dets in enumerate(detections):
            for name in ("pred_boxes", "pred_classes"):
                if not dets.has(name) and len(dets):
                    raise ValueError(f"mask head (inference): detections[{image}] has no {name}")
        counts = [dets.num_instances for dets in detections]  # symbolic when traced
        # No detection at all: skip the head in eager mode; a traced (unknown) count runs it,
        # which gives the same empty result.
        if known_equal(sum(counts), 0):
            device = features[0].device if features else torch.device("cpu")
            probabilities = torch.zeros(0, 1, self.mask_size, self.mask_size, device=device)
        else:
            boxes = [self._pred_boxes(dets, features) for dets in detections]
            mask_features = self._mask_features(features, boxes)
            classes = torch.cat([d.pred_classes for d in detections if d.pred_classes is not None])
            classes = classes.to(mask_features.device)
            mask_logits = self._predict(mask_features, classes)  # (R, K or 1, M, M)
            probabilities = mask_probabilities(mask_logits, classes)
        results: list[Instances] = []
        for dets, masks in zip(detections, split_rows(probabilities, counts), strict=True):
            fields: dict[str, Any] = {**dets.fields(), "pred_masks": masks}
            results.append(Instances(dets.image_size, **fields))
        return results

    @staticmethod
    def _pred_boxes(detections: Instances, features: list[Tensor]) -> Boxes:
        """The detections' boxes (an empty Boxes for an image without detections)."""
        if detections.pred_boxes is not None:
            return detections.pred_boxes
        return Boxes(torch.zeros(0, 4, device=features[0].device))

    # ----------------------------------------------------------------------------------------
    # Shared
    # ----------------------------------------------------------------------------------------
    def _mask_features(self, features: list[Tensor], boxes: list[Boxes]) -> Tensor:
        """Pooled and extracted features of the boxes: (R, C', S', S')."""
        return self.feature_extractor(self.pooler(features, boxes))

    def _predict(self, mask_features: Tensor, classes: Tensor) -> Tensor:
        """Mask logits (R, K, M, M), with M checked against `mask_size`; (R, 1, M, M), the
        logits of class classes[r] only, from a predictor that `selects_classes`.

        Args:
            mask_features: Tensor[R, C', S', S'].
            classes: Tensor[R] int64, the class whose mask each RoI needs.
        """
        if getattr(self.predictor, "selects_classes", False):
            mask_logits = self.predictor(mask_features, classes)
        else:
            mask_logits = self.predictor(mask_features)
        if mask_logits.shape[-2:] != (self.mask_size, self.mask_size):
            raise ValueError(
                f"mask head: the predictor gives {tuple(mask_logits.shape[-2:])} masks but "
                f"MODEL.ROI_MASK_HEAD.RESOLUTION is {self.mask_size}"
            )
        return mask_logits


# --------------------------------------------------------------------------------------------
# Config -> MaskHead
# --------------------------------------------------------------------------------------------
def shares_box_features(cfg: Config) -> bool:
    """Whether the mask head reuses the box head's feature extractor: SHARE_BOX_FEATURE_EXTRACTOR
    with a C4 (res5) box head. FPN box heads (MLPs) have nothing a mask head could reuse."""
    return cfg.MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR and (
        cfg.MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR == C4_BOX_FEATURE_EXTRACTOR
    )


def _check_same_pooling(cfg: Config) -> None:
    """A shared C4 head sees box-pooled RoIs in training and mask-pooled ones at inference."""
    for key in ("POOLER_TYPE", "POOLER_RESOLUTION", "POOLER_SCALES", "POOLER_SAMPLING_RATIO"):
        box_value = getattr(cfg.MODEL.ROI_BOX_HEAD, key)
        mask_value = getattr(cfg.MODEL.ROI_MASK_HEAD, key)
        if list(_as_list(box_value)) != list(_as_list(mask_value)):
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR: MODEL.ROI_MASK_HEAD.{key} "
                f"({mask_value}) must equal MODEL.ROI_BOX_HEAD.{key} ({box_value}), or set "
                "SHARE_BOX_FEATURE_EXTRACTOR False"
            )


def _as_list(value: Any) -> list[Any]:
    return list(value) if not isinstance(value, (str, int, float)) else [value]


def _shared_feature_extractor(
    cfg: Config, box_feature_extractor: nn.Module | None
) -> MaskRCNNC4FeatureExtractor:
    """The box head's res5 as the mask head's feature extractor.

    Takes `box_feature_extractor.head` when it has one (maskrcnn_benchmark's name for the res5
    stage inside ResNet50Conv5ROIFeatureExtractor, whose pooler stays in the box head), else the
    box feature extractor itself, which must then map pooled (R, C, S, S) RoIs to res5 maps.
    """
    if box_feature_extractor is None:
        raise ValueError(
            "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR with a C4 box head needs the box "
            "feature extractor (build_mask_head's box_feature_extractor is None)"
        )
    _check_same_pooling(cfg)
    res5 = getattr(box_feature_extractor, "head", box_feature_extractor)
    out_channels = getattr(res5, "out_channels", getattr(box_feature_extractor, "out_channels", 0))
    if not out_channels:
        raise ValueError("the shared box feature extractor has no `out_channels` attribute")
    return MaskRCNNC4FeatureExtractor(res5, out_channels=int(out_channels), stride=res5_stride(cfg))


def build_mask_head(
    cfg: Config, in_channels: int, box_feature_extractor: nn.Module | None = None
) -> MaskHead:
    """The mask head of MODEL.ROI_MASK_HEAD.

    Args:
        cfg: the config (MODEL.ROI_MASK_HEAD, MODEL.ROI_BOX_HEAD.NUM_CLASSES, and for C4 heads
            MODEL.BACKBONE.CONV_BODY / MODEL.RESNETS).
        in_channels: channels of the backbone features the pooler reads.
        box_feature_extractor: the box head's feature extractor, shared with the mask head when
            SHARE_BOX_FEATURE_EXTRACTOR and MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR is
            "ResNet50Conv5ROIFeatureExtractor" (ignored otherwise).
    """
    from detector.modeling.roi_heads.poolers import build_pooler

    head_cfg = cfg.MODEL.ROI_MASK_HEAD
    share = shares_box_features(cfg)
    if share:
        if head_cfg.FEATURE_EXTRACTOR != C4_BOX_FEATURE_EXTRACTOR:
            logger.warning(
                "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR: the mask head shares the C4 box "
                "head's res5; MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR '%s' is not used",
                head_cfg.FEATURE_EXTRACTOR,
            )
        feature_extractor = _shared_feature_extractor(cfg, box_feature_extractor)
    else:
        if head_cfg.SHARE_BOX_FEATURE_EXTRACTOR:
            logger.info(
                "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR applies to C4 box heads only; "
                "the mask head builds its own %s",
                head_cfg.FEATURE_EXTRACTOR,
            )
        feature_extractor = ROI_MASK_HEADS.get(head_cfg.FEATURE_EXTRACTOR)(cfg, in_channels)
    predictor_class = ROI_MASK_PREDICTORS.get(head_cfg.PREDICTOR)
    predictor = predictor_class(
        feature_extractor.out_channels,
        dim_reduced=int(head_cfg.CONV_LAYERS[-1]),
        num_classes=cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES,
    )
    pooled = head_cfg.POOLER_RESOLUTION
    predicted = feature_extractor.output_resolution(pooled) * predictor_class.upsample
    if head_cfg.RESOLUTION != predicted:
        raise ValueError(
            f"MODEL.ROI_MASK_HEAD.RESOLUTION is {head_cfg.RESOLUTION} but the "
            f"{'shared C4' if share else head_cfg.FEATURE_EXTRACTOR} head with "
            f"{head_cfg.PREDICTOR} predicts {predicted}x{predicted} masks from "
            f"POOLER_RESOLUTION {pooled}; set MODEL.ROI_MASK_HEAD.RESOLUTION {predicted}"
        )
    return MaskHead(
        pooler=build_pooler(head_cfg, in_channels),
        feature_extractor=feature_extractor,
        predictor=predictor,
        mask_size=predicted,
        share_box_features=share,
    )
