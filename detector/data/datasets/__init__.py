"""Datasets: COCO JSON, Pascal VOC, DSB2018 nuclei and the synthetic shapes."""

from detector.data.datasets.base import (
    BACKGROUND,
    DetectionDataset,
    ImageRecord,
    RecordDataset,
    mask_boxes,
)
from detector.data.datasets.coco import COCODataset, load_coco_json
from detector.data.datasets.dsb2018 import DSB2018Dataset
from detector.data.datasets.shapes import SHAPE_CLASS_NAMES, ShapesDataset, draw_shapes
from detector.data.datasets.voc import VOC_CLASS_NAMES, VOCDataset, load_voc_xml

__all__ = [
    "BACKGROUND",
    "COCODataset",
    "DSB2018Dataset",
    "DetectionDataset",
    "ImageRecord",
    "RecordDataset",
    "SHAPE_CLASS_NAMES",
    "ShapesDataset",
    "VOCDataset",
    "VOC_CLASS_NAMES",
    "draw_shapes",
    "load_coco_json",
    "load_voc_xml",
    "mask_boxes",
]
