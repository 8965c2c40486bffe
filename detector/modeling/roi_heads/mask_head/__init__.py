"""Mask R-CNN's mask head: feature extractors, predictors, targets and loss."""

from detector.modeling.roi_heads.mask_head.feature_extractors import (
    MaskRCNNC4FeatureExtractor,
    MaskRCNNFPNFeatureExtractor,
)
from detector.modeling.roi_heads.mask_head.loss import mask_rcnn_loss, mask_rcnn_targets
from detector.modeling.roi_heads.mask_head.mask_head import (
    MaskHead,
    build_mask_head,
    mask_probabilities,
    shares_box_features,
)
from detector.modeling.roi_heads.mask_head.predictors import (
    ROI_MASK_PREDICTORS,
    MaskRCNNC4Predictor,
    MaskRCNNConv1x1Predictor,
)

__all__ = [
    "ROI_MASK_PREDICTORS",
    "MaskHead",
    "MaskRCNNC4FeatureExtractor",
    "MaskRCNNC4Predictor",
    "MaskRCNNConv1x1Predictor",
    "MaskRCNNFPNFeatureExtractor",
    "build_mask_head",
    "mask_probabilities",
    "mask_rcnn_loss",
    "mask_rcnn_targets",
    "shares_box_features",
]
