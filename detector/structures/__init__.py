"""Data structures passed between the stages: boxes, padded image batches, instances, masks."""

from detector.structures.boxes import Boxes, pairwise_iou
from detector.structures.image_list import ImageList
from detector.structures.instances import Instances
from detector.structures.keypoints import Keypoints, flip_indices_from_pairs
from detector.structures.masks import BitMasks, PolygonMasks, polygons_to_bitmask
from detector.structures.sizes import as_size, known_equal, known_greater, size_min

__all__ = [
    "BitMasks",
    "Boxes",
    "ImageList",
    "Instances",
    "Keypoints",
    "PolygonMasks",
    "as_size",
    "known_equal",
    "known_greater",
    "flip_indices_from_pairs",
    "pairwise_iou",
    "polygons_to_bitmask",
    "size_min",
]
