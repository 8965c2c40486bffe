"""Dataset evaluators: COCO (box/mask AP, proposal recall) and Pascal VOC (AP at IoU > 0.5), and
`inference_on_dataset`, a model's pass over a dataset. Imports nothing from detector.engine."""

from detector.evaluation.build import (
    DatasetCOCOEvaluator,
    build_evaluator,
    dataset_to_coco_dict,
    dataset_to_coco_json,
)
from detector.evaluation.coco_evaluation import COCOEvaluator
from detector.evaluation.evaluator import DatasetEvaluator, format_table
from detector.evaluation.inference import TestBatch, inference_on_dataset
from detector.evaluation.pr_curve import PRCurve, draw_pr_curves
from detector.evaluation.results import (
    check_expected_results,
    find_saved_predictions,
    format_metrics,
    reevaluate_saved,
    write_metrics,
)
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
    "TestBatch",
    "VOCEvaluator",
    "VOCGroundTruth",
    "build_evaluator",
    "check_expected_results",
    "dataset_to_coco_dict",
    "dataset_to_coco_json",
    "draw_pr_curves",
    "find_saved_predictions",
    "format_metrics",
    "format_table",
    "inference_on_dataset",
    "load_voc_annotation",
    "reevaluate_saved",
    "voc_ap",
    "voc_iou",
    "voc_match",
    "write_metrics",
]
