"""The box head of Faster R-CNN / R-FCN: feature extractors, predictors, loss and inference."""

from detector.modeling.roi_heads.box_head.feature_extractors import (
    FPN2MLPFeatureExtractor,
    FPNXconv1fcFeatureExtractor,
    ResNet50Conv5ROIFeatureExtractor,
    VGG16FC67FeatureExtractor,
    build_box_feature_extractor,
)
from detector.modeling.roi_heads.box_head.inference import BoxPostProcessor
from detector.modeling.roi_heads.box_head.loss import fast_rcnn_losses, select_class_deltas
from detector.modeling.roi_heads.box_head.predictors import (
    FastRCNNPredictor,
    FPNPredictor,
    RFCNPredictor,
    build_box_predictor,
)

__all__ = [
    "BoxPostProcessor",
    "FPN2MLPFeatureExtractor",
    "FPNPredictor",
    "FPNXconv1fcFeatureExtractor",
    "FastRCNNPredictor",
    "RFCNPredictor",
    "ResNet50Conv5ROIFeatureExtractor",
    "VGG16FC67FeatureExtractor",
    "build_box_feature_extractor",
    "build_box_predictor",
    "fast_rcnn_losses",
    "select_class_deltas",
]
