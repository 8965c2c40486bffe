"""Keypoint R-CNN's keypoint head: feature extractor, predictor, targets and loss, decoding."""

from detector.modeling.roi_heads.keypoint_head.feature_extractors import (
    KeypointRCNNFeatureExtractor,
)
from detector.modeling.roi_heads.keypoint_head.inference import (
    heatmaps_to_keypoints,
    scale_keypoints,
)
from detector.modeling.roi_heads.keypoint_head.keypoint_head import (
    KeypointHead,
    build_keypoint_head,
)
from detector.modeling.roi_heads.keypoint_head.loss import (
    keypoint_rcnn_loss,
    keypoint_rcnn_targets,
    keypoints_to_heatmap_cells,
)
from detector.modeling.roi_heads.keypoint_head.predictors import KeypointRCNNPredictor

__all__ = [
    "KeypointHead",
    "KeypointRCNNFeatureExtractor",
    "KeypointRCNNPredictor",
    "build_keypoint_head",
    "heatmaps_to_keypoints",
    "keypoint_rcnn_loss",
    "keypoint_rcnn_targets",
    "keypoints_to_heatmap_cells",
    "scale_keypoints",
]
