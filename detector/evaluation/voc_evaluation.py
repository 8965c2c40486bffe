"""Pascal VOC detection evaluation: AP per class at IoU > 0.5, as the VOC devkit computes it.

Box conventions. VOC XML boxes are 1-based inclusive pixel indices (xmin, ymin, xmax, ymax): a box
covers xmax - xmin + 1 pixel columns. This project's boxes are continuous (x1, y1, x2, y2) with
width x2 - x1, so a VOC box is the continuous box (xmin - 1, ymin - 1, xmax, ymax) (detectron2's
convention; the VOC dataset loader should read boxes this way). A prediction (x1, y1, x2, y2) is
turned back into VOC pixel indices (x1 + 1, y1 + 1, x2, y2), and the overlap is computed with the
devkit's "+1" widths (VOCevaldet.m: iw = min(x2) - max(x1) + 1, area = (x2 - x1 + 1) * (...)).
We keep the "+1" so that our numbers are the official devkit's numbers on the official boxes;
with the conversion above it equals the plain continuous IoU of the continuous boxes.

Matching (VOCevaldet.m): detections of a class are taken by decreasing score (a stable sort,
ties keep the order of processing); each is matched to the ground truth of its image with the
highest overlap. If that overlap exceeds 0.5 (strictly, as the VOC paper defines it and as
py-faster-rcnn / detectron2 test it; the Matlab devkit tests >=) the detection is: ignored if that
ground truth is `difficult`, a true positive if it is not yet matched, else a false positive
(a duplicate). Otherwise it is a false positive. Difficult objects do not count in the number of
positives.

AP: the VOC2007 11-point metric (mean over recall t in {0, 0.1, ..., 1} of the highest precision
at recall >= t) and the VOC2010+ area metric (area under the precision envelope, the precision
made monotone from the right). A class without (non-difficult) ground truth has AP NaN and is
left out of mAP.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import torch

from detector.evaluation.evaluator import DatasetEvaluator, Record, format_table
from detector.evaluation.pr_curve import PRCurve, draw_pr_curves
from detector.structures import Instances
from detector.utils.arrays import tolist

__all__ = [
    "VOCEvaluator",
    "VOCGroundTruth",
    "voc_ap",
    "voc_iou",
    "voc_match",
    "load_voc_annotation",
]

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5

_ImageId = TypeVar("_ImageId", bound=Hashable)


@dataclass
class VOCGroundTruth:
    """The objects of one class in one image: `boxes` float64 [G, 4] VOC pixel indices
    (xmin, ymin, xmax, ymax) as in the XML, `difficult` bool [G]."""

    boxes: np.ndarray
    difficult: np.ndarray


def load_voc_annotation(
    path: Path, class_names: Sequence[str]
) -> tuple[dict[str, VOCGroundTruth], tuple[int, int] | None]:
    """Reads one VOC XML file: the ground truth per class name and the (height, width) of
    `<size>` (None when absent). An object whose class is not in `class_names` is an error."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: not a valid XML file ({error})") from None
    boxes: dict[str, list[list[float]]] = {name: [] for name in class_names}
    difficult: dict[str, list[bool]] = {name: [] for name in class_names}
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in boxes:
            raise ValueError(
                f"{path}: object {index} has class {name!r}, which is not in class_names "
                f"{list(class_names)}"
            )
        coords = _bndbox(obj.find("bndbox"))
        if coords is None:
            raise ValueError(f"{path}: object {index} ({name}) has no valid <bndbox>")
        boxes[name].append(coords)
        difficult[name].append(int(obj.findtext("difficult") or 0) == 1)
    ground_truth = {
        name: VOCGroundTruth(
            np.asarray(boxes[name], dtype=np.float64).reshape(-1, 4),
            np.asarray(difficult[name], dtype=bool),
        )
        for name in class_names
    }
    size = root.find("size")
    height = size.findtext("height") if size is not None else None
    width = size.findtext("width") if size is not None else None
    image_size = None
    if height and width:
        image_size = (int(float(height)), int(float(width)))
    return ground_truth, image_size


def _bndbox(box: ET.Element | None) -> list[float] | None:
    """(xmin, ymin, xmax, ymax) of a <bndbox>; None when it, or one of them, is missing or is
    not a number."""
    if box is None:
        return None
    coords: list[float] = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = box.findtext(tag)
        if text is None:
            return None
        try:
            coords.append(float(text))
        except ValueError:
            return None
    return coords


def voc_iou(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """Overlap of one box [4] with boxes [G, 4], all VOC pixel indices, with the devkit's "+1"
    (VOCevaldet.m). Returns [G]; 0 where the boxes do not intersect."""
    iw = np.minimum(box[2], gt_boxes[:, 2]) - np.maximum(box[0], gt_boxes[:, 0]) + 1.0
    ih = np.minimum(box[3], gt_boxes[:, 3]) - np.maximum(box[1], gt_boxes[:, 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    gt_area = (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0)
    return inter / (area + gt_area - inter)


def voc_match(
    image_ids: Sequence[_ImageId],
    boxes: np.ndarray,
    scores: np.ndarray,
    ground_truth: Mapping[_ImageId, VOCGroundTruth],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Matches the D detections of one class (image id, VOC pixel box [D, 4], score [D]) to the
    ground truth of that class per image, in decreasing score.

    Returns (recall [P], precision [P], number of positives), P being the detections that are
    not ignored (matched to a difficult object), in decreasing score.
    """
    positives = int(sum((~gt.difficult).sum() for gt in ground_truth.values()))
    order: list[int] = np.argsort(-scores, kind="stable").tolist()
    matched = {
        image_id: np.zeros(len(gt.boxes), dtype=bool) for image_id, gt in ground_truth.items()
    }
    outcome: list[int] = []  # 1: true positive, 0: false positive; ignored detections are left out
    for d in order:
        gt = ground_truth.get(image_ids[d])
        if gt is None or len(gt.boxes) == 0:
            outcome.append(0)
            continue
        overlaps = voc_iou(boxes[d], gt.boxes)
        best = int(np.argmax(overlaps))
        if overlaps[best] <= IOU_THRESHOLD:
            outcome.append(0)
        elif gt.difficult[best]:
            continue
        elif matched[image_ids[d]][best]:
            outcome.append(0)  # a duplicate detection
        else:
            matched[image_ids[d]][best] = True
            outcome.append(1)
    tp = np.cumsum(np.asarray(outcome, dtype=np.float64))
    fp = np.cumsum(1.0 - np.asarray(outcome, dtype=np.float64))
    recall = tp / positives if positives > 0 else np.full_like(tp, np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, positives


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of a precision/recall curve [P] (in decreasing score).

    use_07_metric: the VOC2007 11-point metric, else the VOC2010+ area under the monotone
    precision envelope.
    """
    if use_07_metric:
        total = 0.0
        # t = k / 10, the double nearest to 0.k, the devkit's thresholds 0:0.1:1 as meant
        # (np.arange(0, 1.1, 0.1) accumulates error: 0.6000000000000001 misses recall 0.6).
        for t in np.arange(11) / 10.0:
            above = precision[recall >= t]
            total += float(above.max()) if above.size else 0.0
        return total / 11.0
    # Sentinels: recall 0 and 1 at the ends, precision 0 at both.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: max precision to the right
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


class VOCEvaluator(DatasetEvaluator):
    """Evaluates box detections on a Pascal VOC layout:
    `<voc_root>/Annotations/<id>.xml` and `<voc_root>/ImageSets/Main/<split>.txt`."""

    name = "voc"

    def __init__(
        self,
        voc_root: str | Path,
        split: str,
        class_names: Sequence[str],
        use_07_metric: bool = True,
        output_dir: str | Path | None = None,
    ) -> None:
        """Args:
        voc_root: the folder holding Annotations/ and ImageSets/ (e.g. VOC2007, or BCCD).
        split: the image set, a file stem of ImageSets/Main ("test", "val", ...).
        class_names: the class of each contiguous label: label k is class_names[k - 1].
        use_07_metric: the headline metric ("bbox/mAP", "bbox/AP-<class>") is the VOC2007
            11-point AP if True, else the VOC2010+ area AP; the other one is reported too, as
            "bbox/mAP_area" / "bbox/AP_area-<class>" (or "bbox/mAP_07" / "bbox/AP_07-<class>").
        output_dir: where predictions, metrics and PR curves are written (None: nowhere).
        """
        self.voc_root = Path(voc_root)
        self.split = split
        self.class_names = list(class_names)
        if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ValueError(f"class_names must be distinct and non-empty, got {class_names}")
        self.use_07_metric = use_07_metric
        self._split_ids = self._read_split()
        self._id_set = set(self._split_ids)
        self._ground_truth: dict[str, dict[str, VOCGroundTruth]] | None = None
        self._image_sizes: dict[str, tuple[int, int] | None] = {}
        super().__init__(output_dir)

    def _read_split(self) -> list[str]:
        path = self.voc_root / "ImageSets" / "Main" / f"{self.split}.txt"
        if not path.is_file():
            available = (
                sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
            )
            raise FileNotFoundError(
                f"VOC split file not found: {path} (splits there: {available or 'none'})"
            )
        # A line may carry a second column (the per-class files' "id  1/-1/0"): keep the id.
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def ground_truth(self) -> dict[str, dict[str, VOCGroundTruth]]:
        """class name -> image id -> the ground truth of that class in that image, for every
        image of the split (read on first use)."""
        if self._ground_truth is None:
            per_class: dict[str, dict[str, VOCGroundTruth]] = {n: {} for n in self.class_names}
            for image_id in self._split_ids:
                path = self.voc_root / "Annotations" / f"{image_id}.xml"
                if not path.is_file():
                    raise FileNotFoundError(
                        f"annotation of image {image_id!r} (split {self.split}) not found: {path}"
                    )
                objects, self._image_sizes[image_id] = load_voc_annotation(path, self.class_names)
                for name, gt in objects.items():
                    per_class[name][image_id] = gt
            self._ground_truth = per_class
        return self._ground_truth

    # ----------------------------------------------------------------------------------------
    # Instances -> records {"image_id": str, "class_name": str, "bbox": [x1,y1,x2,y2], "score"}
    # ----------------------------------------------------------------------------------------
    def dataset_image_ids(self) -> list[str]:
        return list(self._split_ids)

    def _check_image_id(self, image_id: Hashable) -> str:
        if isinstance(image_id, str) and image_id in self._id_set:
            return image_id
        raise KeyError(
            f"image id {image_id!r} is not in {self.voc_root}/ImageSets/Main/{self.split}.txt "
            f"({len(self._split_ids)} ids such as {self._split_ids[:2]}; ids are file stems)"
        )

    def _to_records(self, image_id: Hashable, instances: Instances) -> dict[str, list[Record]]:
        image_id = cast(str, image_id)  # process() passes the str that _check_image_id returned
        pred_boxes, pred_scores = instances.pred_boxes, instances.scores
        pred_classes = instances.pred_classes
        if pred_boxes is None and len(instances) == 0:
            return {"detections": []}
        if pred_boxes is None or pred_scores is None or pred_classes is None:
            raise ValueError(
                f"predictions for image {image_id!r} need pred_boxes, scores and pred_classes "
                f"(fields: {list(instances.fields())})"
            )
        self._check_image_size(image_id, instances.image_size)
        boxes: list[list[float]] = tolist(pred_boxes.tensor.detach().cpu())
        scores: list[float] = tolist(pred_scores.detach().cpu())
        names = [self._class_name(label, image_id) for label in pred_classes]
        records: list[Record] = [
            {"image_id": image_id, "class_name": name, "bbox": box, "score": score}
            for name, box, score in zip(names, boxes, scores, strict=True)
        ]
        return {"detections": records}

    def _check_image_size(self, image_id: str, image_size: tuple[int, int]) -> None:
        self.ground_truth()
        expected = self._image_sizes.get(image_id)
        if expected is not None and tuple(image_size) != expected:
            raise ValueError(
                f"predictions for image {image_id!r} have image_size {tuple(image_size)} but its "
                f"annotation gives (height, width) {expected}; predictions must be in original "
                "image pixels"
            )

    def _class_name(self, label: torch.Tensor | int, image_id: Hashable) -> str:
        label = int(label)
        if not 1 <= label <= len(self.class_names):
            raise KeyError(
                f"predicted label {label} (image {image_id!r}) is outside "
                f"1..{len(self.class_names)} (class_names {self.class_names}; 0 is the background)"
            )
        return self.class_names[label - 1]

    def _record_kind(self, records: list[Record], path: Path) -> str:
        return "detections"

    def _check_record(self, record: Record, where: str) -> None:
        keys = ("image_id", "class_name", "bbox", "score")
        # A saved record comes from JSON: it may be anything.
        if not isinstance(record, dict) or any(k not in record for k in keys):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"{where}: a record needs {keys}, got {record!r}")
        try:
            self._check_image_id(record["image_id"])
        except KeyError as error:
            raise KeyError(f"{where}: {error.args[0]}") from None
        if record["class_name"] not in self.class_names:
            raise KeyError(f"{where}: class {record['class_name']!r} is not in {self.class_names}")

    # ----------------------------------------------------------------------------------------
    # Scoring
    # ----------------------------------------------------------------------------------------
    def _evaluate_records(
        self, records: dict[str, list[Record]], image_ids: list[Hashable]
    ) -> dict[str, float]:
        detections = records.get("detections", [])
        ground_truth = self.ground_truth()
        evaluated = set(image_ids)
        aps: dict[str, tuple[float, float, int]] = {}
        curves: dict[str, PRCurve] = {}
        for name in self.class_names:
            gt = {i: g for i, g in ground_truth[name].items() if i in evaluated}
            mine = [r for r in detections if r["class_name"] == name and r["image_id"] in evaluated]
            ids = [r["image_id"] for r in mine]
            # Continuous (x1, y1, x2, y2) -> VOC pixel indices (x1 + 1, y1 + 1, x2, y2).
            boxes = np.asarray([r["bbox"] for r in mine], dtype=np.float64).reshape(-1, 4)
            boxes[:, :2] += 1.0
            scores = np.asarray([r["score"] for r in mine], dtype=np.float64)
            recall, precision, positives = voc_match(ids, boxes, scores, gt)
            if positives == 0:
                aps[name] = (math.nan, math.nan, 0)
                continue
            ap07 = voc_ap(recall, precision, use_07_metric=True)
            ap_area = voc_ap(recall, precision, use_07_metric=False)
            aps[name] = (ap07, ap_area, positives)
            curves[name] = PRCurve(recall, precision, ap07 if self.use_07_metric else ap_area)
        metrics = self._metrics(aps)
        if self.output_dir is not None:
            metric = "VOC2007 11-point" if self.use_07_metric else "VOC2010+ area"
            draw_pr_curves(
                curves, self.output_dir / f"{self.name}_pr_curves.png",
                title=f"VOC {self.split}: precision/recall at IoU > 0.5 ({metric} AP)",
            )  # fmt: skip
        return metrics

    def _metrics(self, aps: dict[str, tuple[float, float, int]]) -> dict[str, float]:
        def mean(values: list[float]) -> float:
            values = [v for v in values if not math.isnan(v)]
            return float(np.mean(values)) if values else math.nan

        ap07 = {name: v[0] for name, v in aps.items()}
        ap_area = {name: v[1] for name, v in aps.items()}
        # The headline AP under its plain name, the other one with its suffix (once each).
        headline, other, suffix = (
            (ap07, ap_area, "_area") if self.use_07_metric else (ap_area, ap07, "_07")
        )
        metrics = {
            "bbox/mAP": mean(list(headline.values())),
            f"bbox/mAP{suffix}": mean(list(other.values())),
        }
        for name in self.class_names:
            metrics[f"bbox/AP-{name}"] = headline[name]
            metrics[f"bbox/AP{suffix}-{name}"] = other[name]
        rows: list[tuple[str, int | str, float, float]] = [
            (name, v[2], v[0], v[1]) for name, v in aps.items()
        ]
        rows.append(("mAP", "", mean(list(ap07.values())), mean(list(ap_area.values()))))
        table = format_table(["class", "positives", "AP (VOC07 11-point)", "AP (area)"], rows)
        self.tables = {"AP per class": table}
        logger.info("VOC %s AP per class (IoU > 0.5):\n%s", self.split, table)
        return metrics
