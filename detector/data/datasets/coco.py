"""COCO instances JSON (boxes, polygon and RLE masks, person keypoints).

Category ids (any integers, e.g. COCO's 1..90 with gaps, or Roboflow's 0..13) are mapped to
contiguous labels 1..K in increasing id order; `contiguous_to_category_id` maps them back for
evaluation. Crowd annotations (`iscrowd` = 1) are not put in the targets: they are "ignore"
regions for COCOeval, which reads them from the JSON. A box with zero or negative width or
height after clipping to the image, or a mask whose polygons all have fewer than 3 points, is
skipped and counted (`num_skipped`, logged); a malformed annotation (missing key, wrong type,
unknown category or image id) raises a DatasetError naming the file and the annotation id.

Keypoints: a category with a "keypoints" list of names (COCO's person_keypoints files) makes the
dataset a keypoint dataset: each annotation's "keypoints" [x1, y1, v1, ..., xK, yK, vK] become
its gt_keypoints (an annotation without them has none labeled, v = 0), the category's
"skeleton" (1-based index pairs) is kept for drawing, left_*/right_* names pair up for flips,
and COCO's person keypoints get COCO's OKS sigmas. A KeypointMeta from the config overrides all
of that (its names must be as many as the file's).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from detector.data.datasets.base import BACKGROUND, ImageRecord, RecordDataset
from detector.data.datasets.keypoints import (
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_OKS_SIGMAS,
    KeypointMeta,
    left_right_pairs,
)
from detector.data.errors import DatasetError
from detector.utils.guards import is_dict, is_list

__all__ = ["COCODataset", "load_coco_json"]

logger = logging.getLogger(__name__)

# A COCO segmentation: polygons [[x0, y0, x1, y1, ...], ...] or an RLE dict.
Segmentation = list[list[float]] | dict[str, Any]


class COCODataset(RecordDataset):
    """Images of a COCO instances JSON, read from `image_dir`.

    Attributes:
        contiguous_to_category_id: label 1..K -> the JSON's category id.
        category_id_to_contiguous: the inverse.
        num_skipped: degenerate annotations skipped while loading.
        json_file: the annotation file.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_dir: str | Path,
        max_pixels: int | None = None,
        keypoint_meta: KeypointMeta | None = None,
    ) -> None:
        self.json_file = Path(json_file)
        records, categories, num_skipped = load_coco_json(
            self.json_file, image_dir, keypoint_meta=keypoint_meta
        )
        class_names = [BACKGROUND] + [c["name"] for c in categories]
        meta = keypoint_meta or _json_keypoint_meta(categories, self.json_file)
        super().__init__(records, class_names, max_pixels, meta)
        self.contiguous_to_category_id = {i + 1: c["id"] for i, c in enumerate(categories)}
        self.category_id_to_contiguous = {v: k for k, v in self.contiguous_to_category_id.items()}
        self.num_skipped = num_skipped


def _json_keypoint_names(categories: list[dict[str, Any]], json_file: Path) -> list[str]:
    """The keypoint names of the categories that have them ([] for none); all must agree."""
    named = [c for c in categories if c.get("keypoints")]
    for c in named:
        if not all(isinstance(n, str) for n in c["keypoints"]):
            raise DatasetError(f"{json_file}: category {c['id']}: 'keypoints' must list names")
        if list(c["keypoints"]) != list(named[0]["keypoints"]):
            raise DatasetError(
                f"{json_file}: categories {named[0]['id']} and {c['id']} name different keypoints"
            )
    return list(named[0]["keypoints"]) if named else []


def _json_keypoint_meta(categories: list[dict[str, Any]], json_file: Path) -> KeypointMeta | None:
    """The KeypointMeta a COCO file declares (None when no category has keypoints)."""
    names = _json_keypoint_names(categories, json_file)
    if not names:
        return None
    category = next(c for c in categories if c.get("keypoints"))
    skeleton: list[tuple[str, str]] = []
    edges: list[Any] = category.get("skeleton") or []
    for edge in edges:
        if len(edge) != 2 or not all(isinstance(k, int) and 1 <= k <= len(names) for k in edge):
            raise DatasetError(
                f"{json_file}: category {category['id']}: skeleton edge {edge!r} must be two "
                f"1-based keypoint indices (1..{len(names)})"
            )
        start: int = edge[0]  # 1-based, checked above
        end: int = edge[1]
        skeleton.append((names[start - 1], names[end - 1]))
    sigmas = COCO_PERSON_OKS_SIGMAS if tuple(names) == COCO_PERSON_KEYPOINTS else ()
    return KeypointMeta(
        names=tuple(names),
        flip_map=tuple(left_right_pairs(names)),
        skeleton=tuple(skeleton),
        oks_sigmas=sigmas,
        where=str(json_file),
    )


def _parse_keypoints(ann: dict[str, Any], num_keypoints: int, where: str) -> np.ndarray:
    """An annotation's keypoints as float32 array[K, 3]; zeros (unlabeled) when it has none."""
    values = ann.get("keypoints")
    if values is None:
        return np.zeros((num_keypoints, 3), dtype=np.float32)
    if not is_list(values) or len(values) != 3 * num_keypoints:
        count = len(values) if is_list(values) else type(values).__name__
        raise DatasetError(
            f"{where}: 'keypoints' must be {3 * num_keypoints} numbers (x, y, v for each of the "
            f"{num_keypoints} keypoints), got {count}"
        )
    # bool is a Real at run time (an int), which the stubs do not say.
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise DatasetError(f"{where}: 'keypoints' must be numbers, got {values!r:.80}")
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: 'keypoints' has a NaN or infinite value: {values!r:.80}")
    return np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)


def _require(entry: Any, keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Checks that dict `entry` has `keys` of the given types; errors name `where`."""
    if not is_dict(entry):
        raise DatasetError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    for key, types in keys.items():
        if key not in entry:
            raise DatasetError(f"{where}: missing key '{key}'")
        value = entry[key]
        if not isinstance(value, types) or isinstance(value, bool):
            names = (
                types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            )
            raise DatasetError(
                f"{where}: '{key}' must be {names}, got {type(value).__name__} ({value!r:.60})"
            )


def _read_json(json_file: Path) -> dict[str, Any]:
    if not json_file.is_file():
        raise DatasetError(f"COCO annotation file not found: {json_file}")
    try:
        data = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON: {e}") from None
    if not is_dict(data):
        raise DatasetError(
            f"{json_file}: expected a JSON object with 'images', 'annotations' "
            f"and 'categories', got {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file}: missing or malformed top-level list '{key}'")
    annotations = data.get("annotations", [])  # test-set files have none
    if not isinstance(annotations, list):
        raise DatasetError(f"{json_file}: 'annotations' must be a list")
    return data


def _check_unique(json_file: Path, key: str, ids: list[Any]) -> None:
    """Raises a DatasetError naming the first id that two entries of `key` share (ids that are
    neither int nor str, e.g. a missing one, are not compared)."""
    first: dict[Any, int] = {}
    for i, entry_id in enumerate(ids):
        if not isinstance(entry_id, (int, str)):
            continue
        if entry_id in first:
            raise DatasetError(
                f"{json_file}: {key}[{first[entry_id]}] and {key}[{i}] have the same id "
                f"{entry_id!r}; ids must be unique"
            )
        first[entry_id] = i


def load_coco_json(
    json_file: str | Path, image_dir: str | Path, keypoint_meta: KeypointMeta | None = None
) -> tuple[list[ImageRecord], list[dict[str, Any]], int]:
    """Parses a COCO instances JSON (with keypoints when a category names them or
    `keypoint_meta` is given).

    Returns:
        records: one per image, in the JSON's image order, crowd annotations left out.
        categories: the JSON's categories sorted by id (label i + 1 is categories[i]).
        num_skipped: degenerate annotations skipped.
    """
    json_file, image_dir = Path(json_file), Path(image_dir)
    data = _read_json(json_file)
    for i, c in enumerate(data["categories"]):
        _require(c, {"id": int, "name": str}, f"{json_file}: categories[{i}]")
    _check_unique(json_file, "categories", [c["id"] for c in data["categories"]])
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    images: dict[Any, dict[str, Any]] = {}
    for i, image in enumerate(data["images"]):
        image_id = image.get("id", "?") if is_dict(image) else "?"
        _require(
            image,
            {"id": (int, str), "file_name": str, "height": int, "width": int},
            f"{json_file}: images[{i}] (image id {image_id})",
        )
        images[image["id"]] = image
    _check_unique(json_file, "images", [image["id"] for image in data["images"]])
    annotations = data.get("annotations", [])
    _check_unique(json_file, "annotations", [a.get("id") if is_dict(a) else None
                                             for a in annotations])  # fmt: skip
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for i, ann in enumerate(annotations):
        ann_id = ann.get("id", f"#{i}") if is_dict(ann) else f"#{i}"
        where = f"{json_file}: annotation id {ann_id}"
        _require(ann, {"image_id": (int, str), "category_id": int, "bbox": list}, where)
        if ann["image_id"] not in images:
            raise DatasetError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in label_of:
            raise DatasetError(
                f"{where}: category_id {ann['category_id']} is not in 'categories' "
                f"(known ids: {sorted(label_of)})"
            )
        bbox = ann["bbox"]
        if len(bbox) != 4 or not all(isinstance(v, Real) for v in bbox):
            raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise DatasetError(f"{where}: 'bbox' has a NaN or infinite value: {bbox!r}")
        by_image[ann["image_id"]].append(ann)
    has_masks = any(ann.get("segmentation") for anns in by_image.values() for ann in anns)
    num_keypoints = _num_keypoints(categories, keypoint_meta, json_file)
    records: list[ImageRecord] = []
    skipped = 0
    for image in data["images"]:
        record, n = _make_record(
            image, by_image[image["id"]], label_of, image_dir, (has_masks, num_keypoints),
            json_file,
        )  # fmt: skip
        records.append(record)
        skipped += n
    if skipped:
        logger.warning(
            "%s: skipped %d degenerate annotations (empty box or mask)", json_file, skipped
        )
    return records, categories, skipped


def _num_keypoints(
    categories: list[dict[str, Any]], keypoint_meta: KeypointMeta | None, json_file: Path
) -> int:
    """K: of the config's KeypointMeta, else of the file's categories (0: no keypoints)."""
    names = _json_keypoint_names(categories, json_file)
    if keypoint_meta is None:
        return len(names)
    if names and len(names) != keypoint_meta.num_keypoints:
        raise DatasetError(
            f"{json_file}: the file names {len(names)} keypoints but {keypoint_meta.where} "
            f"declares {keypoint_meta.num_keypoints}"
        )
    return keypoint_meta.num_keypoints


def _make_record(
    image: dict[str, Any],
    anns: list[dict[str, Any]],
    label_of: dict[int, int],
    image_dir: Path,
    contents: tuple[bool, int],
    json_file: Path,
) -> tuple[ImageRecord, int]:
    """One image's record from its annotations; returns it and the number skipped.

    Args:
        contents: (whether the file has masks, K keypoints or 0).
    """
    has_masks, num_keypoints = contents
    height, width = image["height"], image["width"]
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    segmentations: list[Segmentation] = []
    keypoints: list[np.ndarray] = []
    skipped = 0
    for ann in anns:
        if ann.get("iscrowd", 0):
            continue
        where = f"{json_file}: annotation id {ann.get('id')} (image id {image['id']})"
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = np.clip([x, y, x + w, y + h], 0, [width, height, width, height])
        if box[2] <= box[0] or box[3] <= box[1]:
            skipped += 1
            continue
        if has_masks:
            segmentation = _parse_segmentation(ann.get("segmentation"), where, (height, width))
            if segmentation is None:
                skipped += 1
                continue
            segmentations.append(segmentation)
        if num_keypoints:
            keypoints.append(_parse_keypoints(ann, num_keypoints, where))
        boxes.append(box)
        classes.append(label_of[ann["category_id"]])
    record = ImageRecord(
        image_id=image["id"],
        file_name=str(image_dir / image["file_name"]),
        height=height,
        width=width,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        difficult=np.zeros(len(classes), dtype=bool),
        segmentations=segmentations if has_masks else None,
        keypoints=np.asarray(keypoints, np.float32).reshape(-1, num_keypoints, 3)
        if num_keypoints
        else None,
    )
    return record, skipped


def _parse_segmentation(
    segmentation: Any, where: str, image_size: tuple[int, int]
) -> Segmentation | None:
    """Polygons (those with >= 3 points; None if none is left) or an RLE dict."""
    if is_dict(segmentation):
        if "counts" not in segmentation or "size" not in segmentation:
            raise DatasetError(f"{where}: an RLE 'segmentation' needs 'counts' and 'size'")
        if list(segmentation["size"]) != list(image_size):
            raise DatasetError(
                f"{where}: RLE size {segmentation['size']} differs from the image's "
                f"[height, width] {list(image_size)}"
            )
        return segmentation
    if not is_list(segmentation) or not segmentation:
        raise DatasetError(
            f"{where}: no 'segmentation' although other annotations of this file have masks; "
            "give every annotation a polygon list or an RLE"
        )
    polygons: list[list[float]] = []
    for polygon in segmentation:
        if not is_list(polygon) or not all(isinstance(v, Real) for v in polygon):
            raise DatasetError(f"{where}: a polygon must be a list of numbers [x0, y0, x1, ...]")
        if len(polygon) >= 6 and len(polygon) % 2 == 0:
            polygons.append([float(v) for v in polygon])
    return polygons or None
