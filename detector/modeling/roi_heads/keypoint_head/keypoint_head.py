"""The Keypoint R-CNN keypoint head (He et al. 2017, Sec. 5): RoI features -> K heatmaps.

    pooler(features, boxes)            (R, C, S, S)      S = POOLER_RESOLUTION (14)
    feature_extractor                  (R, C', S, S)     CONV_LAYERS 3x3 convs (8 x 512)
    predictor                          (R, K, M, M)      M = 4 S = RESOLUTION (56)

Training runs on the foreground sampled RoIs (gt_classes > 0) and returns {"loss_keypoint"}
(targets and loss in loss.py). Inference adds to every detection:
- by default `pred_keypoints`, Tensor[R, K, 3]: (x, y, score) in the detections' image
  (inference.py), score the heatmap logit at the keypoint;
- with `decode` off (exported programs), `pred_keypoint_heatmaps`, Tensor[R, K, M, M] logits in
  box coordinates, to decode with `heatmaps_to_keypoints` once the boxes are final.

Shapes: N images, R RoIs (all images), P positive RoIs, C channels, K keypoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.modeling.per_image import required, split_rows
from detector.modeling.registry import ROI_KEYPOINT_FEATURE_EXTRACTORS, ROI_KEYPOINT_PREDICTORS
from detector.modeling.roi_heads.keypoint_head import (
    feature_extractors,  # noqa: F401  # pyright: ignore[reportUnusedImport] (registers)
    predictors,  # noqa: F401  # pyright: ignore[reportUnusedImport] (registers)
)
from detector.modeling.roi_heads.keypoint_head.inference import heatmaps_to_keypoints
from detector.modeling.roi_heads.keypoint_head.loss import keypoint_rcnn_loss, keypoint_rcnn_targets
from detector.structures.boxes import Boxes
from detector.structures.instances import Instances
from detector.structures.sizes import known_equal

__all__ = ["KeypointHead", "build_keypoint_head"]


class KeypointHead(nn.Module):
    """Keypoint R-CNN's keypoint branch: pooler -> feature extractor -> predictor.

    Args:
        pooler: ``pooler(features: list[Tensor], boxes: list[Boxes]) -> Tensor[R, C, S, S]``.
        feature_extractor: ``(R, C, S, S) -> (R, C', S, S)``.
        predictor: ``(R, C', S, S) -> (R, K, M, M)`` heatmap logits.
        heatmap_size: M (RESOLUTION).
        num_keypoints: K.
        decode: at inference, decode the heatmaps into `pred_keypoints` (else return them as
            `pred_keypoint_heatmaps`).
    """

    def __init__(
        self,
        *,
        pooler: nn.Module,
        feature_extractor: nn.Module,
        predictor: nn.Module,
        heatmap_size: int,
        num_keypoints: int,
        decode: bool = True,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.feature_extractor = feature_extractor
        self.predictor = predictor
        self.heatmap_size = heatmap_size
        self.num_keypoints = num_keypoints
        self.decode = decode

    def forward(
        self,
        features: list[Tensor],
        instances: list[Instances],
        targets: list[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Training: `instances` are the sampled RoIs (proposal_boxes, gt_classes, 0 for the
        background, matched_gt_idx), returned as given, with {"loss_keypoint"}. Inference:
        `instances` are detections (pred_boxes), returned with their keypoints, and {}."""
        if self.training:
            if targets is None:
                raise ValueError("keypoint head: training needs `targets` with gt_keypoints")
            positive = [rois[required(rois.gt_classes, "gt_classes") > 0] for rois in instances]
            boxes = [required(rois.proposal_boxes, "proposal_boxes") for rois in positive]
            logits = self._heatmaps(features, boxes)  # (P, K, M, M)
            cells, valid = keypoint_rcnn_targets(positive, targets, self.heatmap_size)
            return instances, {"loss_keypoint": keypoint_rcnn_loss(logits, cells, valid)}
        return self._forward_inference(features, instances), {}

    def _heatmaps(self, features: list[Tensor], boxes: list[Boxes]) -> Tensor:
        """Heatmap logits (R, K, M, M) of the boxes, M checked against `heatmap_size`."""
        logits = self.predictor(self.feature_extractor(self.pooler(features, boxes)))
        if logits.shape[-1] != self.heatmap_size:
            raise ValueError(
                f"keypoint head: the predictor gives {tuple(logits.shape[-2:])} heatmaps but "
                f"MODEL.ROI_KEYPOINT_HEAD.RESOLUTION is {self.heatmap_size}"
            )
        return logits

    def _forward_inference(
        self, features: list[Tensor], detections: list[Instances]
    ) -> list[Instances]:
        counts = [dets.num_instances for dets in detections]  # symbolic when traced
        boxes = [_pred_boxes(dets, features) for dets in detections]
        if known_equal(sum(counts), 0):  # no detection: skip the head in eager mode
            size, device = self.heatmap_size, features[0].device
            logits = torch.zeros(0, self.num_keypoints, size, size, device=device)
        else:
            logits = self._heatmaps(features, boxes)
        results: list[Instances] = []
        for dets, image_boxes, image_logits in zip(
            detections, boxes, split_rows(logits, counts), strict=True
        ):
            fields: dict[str, Any] = dets.fields()
            if self.decode:
                keypoints = heatmaps_to_keypoints(image_logits, image_boxes.tensor)
                fields = {**fields, "pred_keypoints": keypoints}
            else:
                fields = {**fields, "pred_keypoint_heatmaps": image_logits}
            results.append(Instances(dets.image_size, **fields))
        return results


def _pred_boxes(detections: Instances, features: list[Tensor]) -> Boxes:
    """The detections' boxes (an empty Boxes for an image without detections)."""
    if detections.pred_boxes is not None:
        return detections.pred_boxes
    return Boxes(torch.zeros(0, 4, device=features[0].device))


def build_keypoint_head(cfg: Config, in_channels: int) -> KeypointHead:
    """The keypoint head of MODEL.ROI_KEYPOINT_HEAD (NUM_CLASSES keypoints)."""
    from detector.modeling.roi_heads.poolers import build_pooler

    head_cfg = cfg.MODEL.ROI_KEYPOINT_HEAD
    if head_cfg.SHARE_BOX_FEATURE_EXTRACTOR:
        raise ValueError(
            "MODEL.ROI_KEYPOINT_HEAD.SHARE_BOX_FEATURE_EXTRACTOR True is not supported: the "
            "keypoint head has its own convs (set it False, as maskrcnn_benchmark's configs do)"
        )
    pooler = build_pooler(head_cfg, in_channels)
    if pooler.position_sensitive:
        raise ValueError(
            f"MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE {head_cfg.POOLER_TYPE} is position-sensitive "
            "(R-FCN); the keypoint head needs a plain pooler such as ROIAlign"
        )
    extractor = ROI_KEYPOINT_FEATURE_EXTRACTORS.get(head_cfg.FEATURE_EXTRACTOR)(cfg, in_channels)
    predictor_class = ROI_KEYPOINT_PREDICTORS.get(head_cfg.PREDICTOR)
    num_keypoints = int(head_cfg.NUM_CLASSES)
    predictor = predictor_class(extractor.out_channels, num_keypoints)
    pooled = int(head_cfg.POOLER_RESOLUTION)
    predicted = extractor.output_resolution(pooled) * predictor_class.upsample
    if int(head_cfg.RESOLUTION) != predicted:
        raise ValueError(
            f"MODEL.ROI_KEYPOINT_HEAD.RESOLUTION is {head_cfg.RESOLUTION} but "
            f"{head_cfg.PREDICTOR} predicts {predicted}x{predicted} heatmaps from "
            f"POOLER_RESOLUTION {pooled}; set MODEL.ROI_KEYPOINT_HEAD.RESOLUTION {predicted}"
        )
    return KeypointHead(
        pooler=pooler,
        feature_extractor=extractor,
        predictor=predictor,
        heatmap_size=predicted,
        num_keypoints=num_keypoints,
    )
