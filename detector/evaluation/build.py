"""The evaluator of a named dataset, from the config.

    COCODataset                     -> COCOEvaluator on its JSON (bbox, + segm with MODEL.MASK_ON,
                                       + keypoints with MODEL.KEYPOINT_ON, OKS sigmas of the
                                       dataset's KeypointMeta)
    VOCDataset (ImageSets/Main)     -> VOCEvaluator (TEST.VOC_USE_07_METRIC: 11-point or area AP)
    anything else (shapes, dsb2018, VOC with instance masks or without a split file), and
    RPN-only models on VOC          -> its ground truth written as a COCO JSON, COCOEvaluator

RPN-only models (MODEL.RPN_ONLY) are scored by proposal recall (AR@100, AR@1000, ...), which the
COCOEvaluator computes from proposal records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from detector.config import Config
from detector.evaluation._pycocotools import RLE, encode_rles, rle_area
from detector.evaluation.coco_evaluation import COCOEvaluator
from detector.evaluation.evaluator import DatasetEvaluator
from detector.evaluation.voc_evaluation import VOCEvaluator

__all__ = [
    "DatasetCOCOEvaluator",
    "build_evaluator",
    "dataset_to_coco_dict",
    "dataset_to_coco_json",
]

logger = logging.getLogger(__name__)

GROUND_TRUTH_JSON = "ground_truth_coco.json"


# --------------------------------------------------------------------------------------------
# Any dataset -> COCO ground truth
# --------------------------------------------------------------------------------------------
def _coco_image_ids(dataset: Any) -> dict[Hashable, int]:
    """meta image_id -> COCO image id: the ids themselves when they are all non-negative ints,
    else 1..N in dataset order (COCO's ids are integers)."""
    ids = [dataset.get_meta(i)["image_id"] for i in range(len(dataset))]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{type(dataset).__name__}: image ids repeat; they must be unique")
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in ids):
        return {i: int(i) for i in ids}
    return {image_id: k for k, image_id in enumerate(ids, start=1)}


def _mask_rles(target: Any, height: int, width: int) -> list[RLE]:
    """The RLE of each instance mask of `target` (gt_masks PolygonMasks or BitMasks)."""
    bitmasks = target.gt_masks.to_bitmasks(height, width).tensor  # (N, H, W) bool
    if len(bitmasks) == 0:
        return []
    array: npt.NDArray[np.uint8] = bitmasks.to(torch.uint8).numpy()
    return encode_rles(array)


def dataset_to_coco_dict(dataset: Any) -> tuple[dict[str, Any], dict[Hashable, int]]:
    """The ground truth of a detection dataset as a COCO instances dict.

    Images: id = meta image_id (or 1..N when the ids are not integers), file_name, height,
    width. Categories: id = the contiguous label 1..K, name = class_names[k]. Annotations: bbox
    [x, y, w, h] of gt_boxes, area (mask pixels with masks, else box area), iscrowd 1 for
    `difficult` objects (COCOeval ignores them, as VOC does) else 0, segmentation as an RLE
    of the instance mask when the dataset has masks, and keypoints [x1, y1, v1, ...] with
    num_keypoints (the v > 0 ones) when it has keypoints (the categories then name them and
    their skeleton, 1-based, as COCO's person category does).

    Returns:
        (the COCO dict, meta image_id -> COCO image id).
    """
    id_map = _coco_image_ids(dataset)
    with_masks = bool(getattr(dataset, "has_masks", False))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        meta = dataset.get_meta(index)
        height, width = int(meta["height"]), int(meta["width"])
        image_id = id_map[meta["image_id"]]
        images.append(
            {
                "id": image_id,
                "file_name": str(meta.get("file_name", "")),
                "height": height,
                "width": width,
            }
        )
        annotations += _annotations(dataset.load_target(index), image_id, height, width,
                                    with_masks, first_id=len(annotations) + 1)  # fmt: skip
    categories = [
        {"id": label, "name": name, "supercategory": "none", **_keypoint_fields(dataset)}
        for label, name in enumerate(dataset.class_names)
        if label > 0
    ]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return coco, id_map


def _keypoint_fields(dataset: Any) -> dict[str, Any]:
    """A category's "keypoints" (names) and "skeleton" (1-based pairs); {} without keypoints."""
    meta = getattr(dataset, "keypoint_meta", None)
    if meta is None:
        return {}
    skeleton = [[a + 1, b + 1] for a, b in meta.skeleton_indices]
    return {"keypoints": list(meta.names), "skeleton": skeleton}


def _keypoint_records(target: Any) -> list[dict[str, Any]]:
    """Per instance {"keypoints": [x1, y1, v1, ...], "num_keypoints": labeled count}."""
    keypoints = target.gt_keypoints.tensor  # (N, K, 3)
    labeled = (keypoints[..., 2] > 0).sum(dim=1).tolist()  # (N,)
    return [
        {"keypoints": points.reshape(-1).tolist(), "num_keypoints": int(count)}
        for points, count in zip(keypoints, labeled, strict=True)
    ]


def _annotations(
    target: Any, image_id: int, height: int, width: int, with_masks: bool, first_id: int
) -> list[dict[str, Any]]:
    boxes = target.gt_boxes.tensor.tolist()
    classes = target.gt_classes.tolist()
    difficult = target.difficult.tolist() if target.difficult is not None else [False] * len(boxes)
    rles: Sequence[RLE | None] = (
        _mask_rles(target, height, width) if with_masks else [None] * len(boxes)
    )
    records: list[dict[str, Any]] = []
    for k, ((x1, y1, x2, y2), label, hard, rle) in enumerate(
        zip(boxes, classes, difficult, rles, strict=True)
    ):
        record: dict[str, Any] = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": int(bool(hard)),
        }
        if rle is not None:
            record["segmentation"] = rle
            record["area"] = rle_area(rle)
        records.append(record)
    if target.gt_keypoints is not None:
        for record, keypoints in zip(records, _keypoint_records(target), strict=True):
            record.update(keypoints)
    return records


def dataset_to_coco_json(dataset: Any, path: str | Path) -> dict[Hashable, int]:
    """Writes `dataset_to_coco_dict(dataset)` to `path` (atomically: readers never see a partial
    file). Returns meta image_id -> COCO image id."""
    coco, id_map = dataset_to_coco_dict(dataset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(coco))
    os.replace(partial, path)
    logger.info(
        "wrote the ground truth of %d images (%d objects) as COCO JSON: %s",
        len(coco["images"]),
        len(coco["annotations"]),
        path,
    )
    return id_map


class DatasetCOCOEvaluator(COCOEvaluator):
    """A COCOEvaluator on a dataset converted by `dataset_to_coco_json`, accepting the dataset's
    own image ids (e.g. DSB2018's file stems) and mapping them to the JSON's integer ids."""

    def __init__(
        self, annotation_json: str | Path, image_id_map: Mapping[Hashable, int], **kwargs: Any
    ) -> None:
        self.image_id_map = dict(image_id_map)
        super().__init__(annotation_json, **kwargs)

    def _check_image_id(self, image_id: Hashable) -> int:
        if isinstance(image_id, torch.Tensor):
            image_id = image_id.item()
        if isinstance(image_id, str) and image_id in self.image_id_map:
            image_id = self.image_id_map[image_id]
        return super()._check_image_id(image_id)


# --------------------------------------------------------------------------------------------
# build_evaluator
# --------------------------------------------------------------------------------------------
def _coco_tasks(cfg: Config, dataset: Any) -> tuple[str, ...]:
    """bbox, + segm (MODEL.MASK_ON, a dataset with masks), + keypoints (MODEL.KEYPOINT_ON, a
    dataset with keypoints)."""
    has_masks = bool(getattr(dataset, "has_masks", False))
    has_keypoints = getattr(dataset, "keypoint_meta", None) is not None
    if cfg.MODEL.MASK_ON and not has_masks:
        logger.warning("MODEL.MASK_ON but the test dataset has no masks: not evaluating masks")
    if cfg.MODEL.KEYPOINT_ON and not has_keypoints:
        logger.warning("MODEL.KEYPOINT_ON but the test dataset has no keypoints: not evaluated")
    tasks = ["bbox"]
    if cfg.MODEL.MASK_ON and has_masks:
        tasks.append("segm")
    if cfg.MODEL.KEYPOINT_ON and has_keypoints:
        tasks.append("keypoints")
    return tuple(tasks)


def _keypoint_sigmas(cfg: Config, dataset: Any, tasks: tuple[str, ...]) -> list[float] | None:
    """The dataset's OKS sigmas when keypoints are evaluated (an error when it has none)."""
    if "keypoints" not in tasks:
        return None
    meta = dataset.keypoint_meta
    if not meta.oks_sigmas:
        raise ValueError(
            f"{meta.where}: evaluating keypoints needs one OKS sigma per keypoint; declare "
            f"KEYPOINT_OKS_SIGMAS (e.g. [0.05] * {meta.num_keypoints}) for the dataset in "
            "DATASETS.CUSTOM.<name>"
        )
    if meta.num_keypoints != int(cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES):
        raise ValueError(
            f"MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES = {cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_CLASSES} "
            f"but {meta.where} has {meta.num_keypoints} keypoints"
        )
    return list(meta.oks_sigmas)


def _voc_split_file(dataset: Any) -> Path | None:
    """ImageSets/Main/<split>.txt when VOCEvaluator can use it (boxes only, a named split)."""
    if dataset.has_masks or not dataset.split or dataset.ann_dir != dataset.root / "Annotations":
        return None
    path = Path(dataset.root) / "ImageSets" / "Main" / f"{dataset.split}.txt"
    return path if path.is_file() else None


def build_evaluator(
    cfg: Config,
    dataset_name: str,
    output_dir: str | Path | None = None,
    *,
    dataset: Any = None,
) -> DatasetEvaluator:
    """The evaluator of DATASETS.TEST entry `dataset_name` (see the module docstring).

    Args:
        cfg: reads MODEL.MASK_ON, MODEL.RPN_ONLY and TEST.VOC_USE_07_METRIC.
        dataset_name: a catalog or DATASETS.CUSTOM name.
        output_dir: where the evaluator writes predictions, metrics and PR curves (and, for
            converted datasets, ground_truth_coco.json); None: nowhere (a temporary file holds
            the converted ground truth while it is read).
        dataset: the dataset, if already built (e.g. `loader.dataset.dataset`).
    """
    from detector.data import COCODataset, VOCDataset, get_dataset

    if dataset is None:
        dataset = get_dataset(dataset_name, cfg)
    has_masks = bool(getattr(dataset, "has_masks", False))
    tasks = _coco_tasks(cfg, dataset)
    if isinstance(dataset, COCODataset):
        return COCOEvaluator(
            dataset.json_file,
            output_dir=output_dir,
            tasks=tasks,
            label_to_category_id=dataset.contiguous_to_category_id,
            keypoint_oks_sigmas=_keypoint_sigmas(cfg, dataset, tasks),
        )
    if isinstance(dataset, VOCDataset) and not cfg.MODEL.RPN_ONLY:
        if _voc_split_file(dataset) is not None and not (cfg.MODEL.MASK_ON and has_masks):
            return VOCEvaluator(
                dataset.root,
                dataset.split,
                dataset.class_names[1:],
                use_07_metric=cfg.TEST.VOC_USE_07_METRIC,
                output_dir=output_dir,
            )
        logger.info(
            "%s: VOC data without an ImageSets/Main split file or with masks; evaluating with "
            "COCO metrics on its converted ground truth",
            dataset_name,
        )
    return _converted_evaluator(cfg, dataset, output_dir, tasks)


def _converted_evaluator(
    cfg: Config, dataset: Any, output_dir: str | Path | None, tasks: tuple[str, ...]
) -> DatasetCOCOEvaluator:
    kwargs = {"tasks": tasks, "keypoint_oks_sigmas": _keypoint_sigmas(cfg, dataset, tasks)}
    if output_dir is not None:
        path = Path(output_dir) / GROUND_TRUTH_JSON
        id_map = dataset_to_coco_json(dataset, path)
        return DatasetCOCOEvaluator(path, id_map, output_dir=output_dir, **kwargs)
    with tempfile.TemporaryDirectory() as directory:  # read at construction, then removed
        path = Path(directory) / GROUND_TRUTH_JSON
        id_map = dataset_to_coco_json(dataset, path)
        return DatasetCOCOEvaluator(path, id_map, **kwargs)
