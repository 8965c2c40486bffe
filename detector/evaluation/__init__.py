"""Dataset evaluators: COCO (box/mask AP, proposal recall) and Pascal VOC (AP at IoU > 0.5)."""

from detector.evaluation.build import (
    DatasetCOCOEvaluator,
    build_evaluator,
    dataset_to_coco_dict,
    dataset_to_coco_json,
    make_evaluate_fn,
)
from detector.evaluation.coco_evaluation import COCOEvaluator
from detector.evaluation.evaluator import DatasetEvaluator, format_table
from detector.evaluation.pr_curve import PRCurve, draw_pr_curves
from detector.evaluation.voc_evaluation import (
    VOCEvaluator,
    VOCGroundTruth,
    load_voc_annotation,
    voc_ap,
    voc_iou,
    voc_match,
)

__all__ = [
    "COCOEvaluator",
    "DatasetCOCOEvaluator",
    "DatasetEvaluator",
    "PRCurve",
    "VOCEvaluator",
    "VOCGroundTruth",
    "build_evaluator",
    "dataset_to_coco_dict",
    "dataset_to_coco_json",
    "draw_pr_curves",
    "format_table",
    "load_voc_annotation",
    "make_evaluate_fn",
    "voc_ap",
    "voc_iou",
    "voc_match",
]
