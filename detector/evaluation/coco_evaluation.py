"""COCO-style evaluation with pycocotools: box, mask and keypoint AP (COCOeval) and proposal
recall.

Predictions become records in COCO's results format as they are processed:
    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float,
     "segmentation": {"size": [H, W], "counts": str},   (segmentation only with pred_masks)
     "keypoints": [x1, y1, s1, ..., xK, yK, sK]}        (keypoints only with pred_keypoints)
Keypoints are scored by OKS (iouType "keypoints") with the dataset's per-keypoint sigmas, on
COCO's keypoint results format (the records without bbox and segmentation: COCOeval derives a
detection's box and area from its keypoints); the record's score is the detection's, and s_k
the keypoint's heatmap score (COCOeval reads x, y only).
and proposals (RPN-only models, no category) become {"image_id", "bbox": [x, y, w, h], "score"}.

Shapes: R predictions of one image, H x W the original image size, K categories.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import numbers
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation._pycocotools import RLE, encode_rles, load_results
from detector.evaluation.evaluator import DatasetEvaluator, Record, format_table
from detector.evaluation.pr_curve import PRCurve, draw_pr_curves
from detector.structures import Instances
from detector.utils.arrays import tolist

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)

# The order of COCOeval.stats (summarize()) for boxes and masks.
_SUMMARY_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR@1", "AR@10", "AR@100", "ARs@100", "ARm@100", "ARl@100",
)  # fmt: skip
# ... and for keypoints (20 detections per image, no small area range).
_KEYPOINT_SUMMARY_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
_PROPOSAL_MAX_DETS = (100, 1000)
_AREA_NAMES = ("", "s", "m", "l")  # COCOeval's area ranges: all, small, medium, large
_TASKS = ("bbox", "segm", "keypoints")
_IoUType = Literal["bbox", "segm", "keypoints"]  # COCOeval's iouType: one of _TASKS


class COCOEvaluator(DatasetEvaluator):
    """Evaluates detections (bbox, segm, keypoints) and proposals on a COCO-format annotation
    file.

    Detections are scored by COCOeval (iouType "bbox", "segm" and "keypoints"). Proposals are
    scored by COCOeval with useCats=0 and maxDets (100, 1000): AR@N is COCO's average recall over
    IoU 0.50:0.05:0.95 with the top N proposals of each image, crowd regions ignored.
    """

    name = "coco"

    def __init__(
        self,
        annotation_json: str | Path,
        output_dir: str | Path | None = None,
        tasks: Sequence[str] = ("bbox", "segm"),
        label_to_category_id: Mapping[int, int] | None = None,
        keypoint_oks_sigmas: Sequence[float] | None = None,
    ) -> None:
        """Args:
        annotation_json: COCO instances JSON with the ground truth.
        output_dir: where results, metrics and PR curves are written (None: nowhere).
        tasks: a subset of ("bbox", "segm", "keypoints"); "segm" ("keypoints") is skipped,
            with a warning, when no prediction has pred_masks (pred_keypoints).
        label_to_category_id: contiguous label (1..K) -> category id of the file; None maps
            the sorted category ids of the file to 1..K.
        keypoint_oks_sigmas: the OKS sigma of each keypoint (needed with "keypoints").
        """
        path = Path(annotation_json)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        unknown = [t for t in tasks if t not in _TASKS]
        if unknown:
            raise ValueError(f"COCOEvaluator: unknown tasks {unknown}; known tasks: {_TASKS}")
        self.tasks = tuple(tasks)
        if "keypoints" in self.tasks and not keypoint_oks_sigmas:
            raise ValueError("COCOEvaluator: the keypoints task needs keypoint_oks_sigmas")
        self.keypoint_oks_sigmas = np.asarray(keypoint_oks_sigmas or [], dtype=np.float64)
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            self.coco_gt = COCO(str(path))
        self.annotation_json = path
        self.label_to_category_id = self._check_mapping(label_to_category_id)
        self._category_ids = set(self.coco_gt.getCatIds())
        super().__init__(output_dir)

    def reset(self) -> None:
        super().reset()
        self._masks_seen = False  # whether a processed Instances had pred_masks
        self._keypoints_seen = False  # ... pred_keypoints

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "masks_seen": self._masks_seen,
            "keypoints_seen": self._keypoints_seen,
        }

    def merge_state(self, state: dict[str, Any]) -> None:
        super().merge_state(state)
        self._masks_seen = self._masks_seen or bool(state.get("masks_seen", False))
        self._keypoints_seen = self._keypoints_seen or bool(state.get("keypoints_seen", False))

    def _check_mapping(self, mapping: Mapping[int, int] | None) -> dict[int, int]:
        category_ids = sorted(self.coco_gt.getCatIds())
        if mapping is None:
            return {label: cat_id for label, cat_id in enumerate(category_ids, start=1)}
        missing = sorted(set(mapping.values()) - set(category_ids))
        if missing:
            raise ValueError(
                f"label_to_category_id maps to category ids {missing} that "
                f"{self.annotation_json} does not define"
            )
        return {int(label): int(cat_id) for label, cat_id in mapping.items()}

    # ----------------------------------------------------------------------------------------
    # Instances -> records
    # ----------------------------------------------------------------------------------------
    def dataset_image_ids(self) -> list[int]:
        return sorted(self.coco_gt.getImgIds())

    def _check_image_id(self, image_id: Hashable) -> int:
        if isinstance(image_id, torch.Tensor):
            image_id = image_id.item()
        if isinstance(image_id, numbers.Integral) and int(image_id) in self.coco_gt.imgs:
            return int(image_id)
        raise KeyError(
            f"image id {image_id!r} is not in {self.annotation_json} "
            f"({len(self.coco_gt.imgs)} images, e.g. ids {self.dataset_image_ids()[:3]})"
        )

    def _to_records(self, image_id: Hashable, instances: Instances) -> dict[str, list[Record]]:
        image_id = cast(int, image_id)  # process() passes the int that _check_image_id returned
        self._check_image_size(image_id, instances.image_size)
        records: dict[str, list[Record]] = {}
        if instances.pred_boxes is not None:
            records["instances"] = self._detection_records(image_id, instances)
        if instances.proposal_boxes is not None:
            records["proposals"] = self._proposal_records(image_id, instances)
        if not records and len(instances) > 0:
            raise ValueError(
                f"predictions for image {image_id} have neither pred_boxes nor proposal_boxes "
                f"(fields: {list(instances.fields())})"
            )
        return records

    def _image_size(self, image_id: int) -> tuple[int, int]:
        info = self.coco_gt.imgs[image_id]
        return int(info["height"]), int(info["width"])

    def _check_image_size(self, image_id: int, image_size: tuple[int, int]) -> None:
        expected = self._image_size(image_id)
        if tuple(image_size) != expected:
            raise ValueError(
                f"predictions for image {image_id} have image_size {tuple(image_size)} but "
                f"{self.annotation_json} gives (height, width) {expected}; predictions must be "
                "in original image pixels (rescale them before evaluation)"
            )

    def _detection_records(self, image_id: int, instances: Instances) -> list[Record]:
        pred_boxes, pred_scores = instances.pred_boxes, instances.scores
        pred_classes = instances.pred_classes
        if pred_boxes is None or pred_scores is None or pred_classes is None:
            raise ValueError(
                f"predictions for image {image_id} have pred_boxes but lack scores or pred_classes"
            )
        boxes = _xyxy_to_xywh(pred_boxes.tensor)
        scores: list[float] = tolist(pred_scores.detach().cpu())
        category_ids = [self._category_id(label, image_id) for label in pred_classes]
        records: list[Record] = [
            {"image_id": image_id, "category_id": cat, "bbox": box, "score": score}
            for cat, box, score in zip(category_ids, boxes, scores, strict=True)
        ]
        if instances.pred_masks is not None and "segm" in self.tasks:
            self._masks_seen = True
            rles = self._encode_masks(image_id, instances.pred_masks)
            for record, rle in zip(records, rles, strict=True):
                record["segmentation"] = rle
        if instances.pred_keypoints is not None and "keypoints" in self.tasks:
            self._keypoints_seen = True
            keypoints = instances.pred_keypoints.detach().cpu().float()  # (R, K, 3)
            for record, points in zip(records, keypoints.reshape(len(records), -1), strict=True):
                record["keypoints"] = tolist(points)
        return records

    def _category_id(self, label: torch.Tensor | int, image_id: Hashable) -> int:
        label = int(label)
        if label not in self.label_to_category_id:
            labels = sorted(self.label_to_category_id)
            raise KeyError(
                f"predicted label {label} (image {image_id}) is not in label_to_category_id, "
                f"which maps labels {labels[0]}..{labels[-1]} ({len(labels)} labels; "
                "0 is the background and is never a detection)"
            )
        return self.label_to_category_id[label]

    def _encode_masks(self, image_id: int, masks: torch.Tensor) -> list[RLE]:
        """RLE of masks Tensor[R, H, W] (or [R, 1, H, W]); floating masks are cut at 0.5."""
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]  # (R, 1, H, W) -> (R, H, W)
        expected = self._image_size(image_id)
        if masks.dim() != 3 or tuple(masks.shape[1:]) != expected:
            raise ValueError(
                f"pred_masks of image {image_id} have shape {tuple(masks.shape)}; expected pasted "
                f"masks (R, {expected[0]}, {expected[1]}) in original image pixels"
            )
        if masks.is_floating_point():
            masks = masks >= 0.5
        array: npt.NDArray[np.uint8] = masks.detach().to("cpu", torch.uint8).numpy()
        return encode_rles(array)

    def _proposal_records(self, image_id: int, instances: Instances) -> list[Record]:
        proposal_boxes, logits = instances.proposal_boxes, instances.objectness_logits
        if proposal_boxes is None or logits is None:
            raise ValueError(f"proposals for image {image_id} lack objectness_logits")
        boxes = _xyxy_to_xywh(proposal_boxes.tensor)
        scores: list[float] = tolist(logits.detach().cpu())
        return [
            {"image_id": image_id, "bbox": box, "score": score}
            for box, score in zip(boxes, scores, strict=True)
        ]

    # ----------------------------------------------------------------------------------------
    # Saved records
    # ----------------------------------------------------------------------------------------
    def _record_kind(self, records: list[Record], path: Path) -> str:
        kinds = {"instances" if "category_id" in r else "proposals" for r in records}
        if len(kinds) > 1:
            raise ValueError(
                f"{path} mixes detections (with category_id) and proposals (without); "
                "save them in separate files"
            )
        if not kinds:
            return "proposals" if "proposals" in path.name else "instances"
        return kinds.pop()

    def _check_record(self, record: Record, where: str) -> None:
        # A saved record comes from JSON: it may be anything.
        if not isinstance(record, dict) or "image_id" not in record or "bbox" not in record:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"{where}: a record needs image_id and bbox, got {record!r}")
        try:
            self._check_image_id(record["image_id"])
        except KeyError as error:
            raise KeyError(f"{where}: {error.args[0]}") from None
        category_id = record.get("category_id")
        if category_id is not None and category_id not in self._category_ids:
            raise KeyError(
                f"{where}: category_id {category_id} is not a category of {self.annotation_json}"
            )

    # ----------------------------------------------------------------------------------------
    # Scoring
    # ----------------------------------------------------------------------------------------
    def _evaluate_records(
        self, records: dict[str, list[Record]], image_ids: list[Hashable]
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        self.tables = {}
        if "proposals" in records:
            metrics.update(self._evaluate_proposals(records["proposals"], image_ids))
        detections = records.get("instances")
        if detections is None:
            if "proposals" not in records:
                # Only images without any prediction: score detections (all AP are 0).
                detections = []
            else:
                return metrics
        for task in self.tasks:
            if task == "segm":
                with_masks = all("segmentation" in r for r in detections)
                if not (with_masks and (detections or self._masks_seen)):
                    logger.warning("COCOEvaluator: skipping segm, predictions have no masks")
                    continue
                results = [{k: v for k, v in r.items() if k != "bbox"} for r in detections]
            elif task == "keypoints":
                with_keypoints = all("keypoints" in r for r in detections)
                if not (with_keypoints and (detections or self._keypoints_seen)):
                    logger.warning("COCOEvaluator: skipping keypoints, predictions have none")
                    continue
                # COCO's keypoint results format: COCOeval takes the box from the keypoints
                drop = ("bbox", "segmentation")
                results = [{k: v for k, v in r.items() if k not in drop} for r in detections]
            else:
                results = [{k: v for k, v in r.items() if k != "keypoints"} for r in detections]
            metrics.update(self._evaluate_task(task, results, image_ids))
        return metrics

    def _evaluate_task(
        self, task: str, results: list[Record], image_ids: list[Hashable]
    ) -> dict[str, float]:
        sigmas = self.keypoint_oks_sigmas if task == "keypoints" else None
        coco_eval = _run_cocoeval(self.coco_gt, results, task, image_ids, oks_sigmas=sigmas)
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        logger.info("COCO %s:\n%s", task, summary.getvalue().rstrip())
        keys = _KEYPOINT_SUMMARY_KEYS if task == "keypoints" else _SUMMARY_KEYS
        metrics = {
            f"{task}/{key}": _stat(value) for key, value in zip(keys, coco_eval.stats, strict=True)
        }
        per_category = self._per_category_ap(coco_eval)
        metrics.update({f"{task}/AP-{name}": ap for name, ap in per_category.items()})
        rows = [(name, ap) for name, ap in per_category.items() if not np.isnan(ap)]
        table = format_table(["category", "AP"], rows)
        if len(rows) < len(per_category):
            table += f"\n({len(per_category) - len(rows)} categories without ground truth: NaN)"
        self.tables[f"{task} AP per category"] = table
        logger.info("COCO %s AP per category:\n%s", task, table)
        if self.output_dir is not None:
            self._save_pr_curves(task, coco_eval, self.output_dir)
        return metrics

    def _per_category_ap(self, coco_eval: COCOeval) -> dict[str, float]:
        """AP over IoU (OKS) 0.50:0.95, all areas, the most detections, of each category; NaN when a
        category has no ground truth in the evaluated images."""
        # precision: (T IoUs, 101 recall thresholds, K categories, 4 areas, 3 maxDets)
        precision = coco_eval.eval["precision"]
        aps: dict[str, float] = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            name = self.coco_gt.cats[cat_id]["name"]
            aps[name] = float(np.mean(values)) if values.size else float("nan")
        return aps

    def _save_pr_curves(self, task: str, coco_eval: COCOeval, output_dir: Path) -> None:
        """Precision at IoU 0.5 (all areas, 100 detections) against COCO's 101 recall
        thresholds, for each category with ground truth."""
        precision = coco_eval.eval["precision"]
        recall = np.asarray(coco_eval.params.recThrs)
        curves: dict[str, PRCurve] = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            values = precision[0, :, k, 0, -1]
            if (values > -1).any():
                ap50 = float(np.mean(values[values > -1]))
                curves[self.coco_gt.cats[cat_id]["name"]] = PRCurve(recall, values, ap50)
        path = output_dir / f"{self.name}_pr_{task}.png"
        draw_pr_curves(curves, path, title=f"COCO {task}: precision/recall at IoU 0.5 (AP50)")

    def _evaluate_proposals(
        self, proposals: list[Record], image_ids: list[Hashable]
    ) -> dict[str, float]:
        category = min(self._category_ids)  # useCats=0 ignores it; COCO's index needs one
        results = [{**r, "category_id": category} for r in proposals]
        coco_eval = _run_cocoeval(
            self.coco_gt, results, "bbox", image_ids, use_cats=False, max_dets=_PROPOSAL_MAX_DETS
        )
        # recall: (T IoUs, K=1, 4 areas, 2 maxDets); -1 where no ground truth
        recall = coco_eval.eval["recall"]
        metrics: dict[str, float] = {}
        for m, max_dets in enumerate(_PROPOSAL_MAX_DETS):
            for a, area in enumerate(_AREA_NAMES):
                if area and max_dets != _PROPOSAL_MAX_DETS[-1]:
                    continue
                values = recall[:, 0, a, m]
                values = values[values > -1]
                metrics[f"AR{area}@{max_dets}"] = (
                    float(np.mean(values)) if values.size else float("nan")
                )
        logger.info("COCO proposals: %s", {k: round(v, 4) for k, v in metrics.items()})
        return metrics


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    """Tensor[R, 4] (x1, y1, x2, y2) -> R lists [x, y, w, h] (COCO's box format)."""
    values: list[list[float]] = tolist(boxes.detach().cpu())
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in values]


def _stat(value: float) -> float:
    """COCOeval writes -1 where a metric is undefined (no ground truth); that becomes NaN."""
    return float(value) if value >= 0 else float("nan")


def _load_results(coco_gt: COCO, results: list[Record]) -> COCO:
    """COCO.loadRes on a copy of `results` (it edits them), or an empty result set."""
    if results:
        return load_results(coco_gt, results)
    empty = COCO()
    empty.dataset = {
        "images": copy.deepcopy(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _run_cocoeval(
    coco_gt: COCO,
    results: list[Record],
    iou_type: str,
    image_ids: Sequence[Hashable],
    use_cats: bool = True,
    max_dets: Sequence[int] | None = None,
    oks_sigmas: npt.NDArray[np.float64] | None = None,
) -> COCOeval:
    """COCOeval evaluated and accumulated on `image_ids` (not summarized); `oks_sigmas` for
    iou_type "keypoints"."""
    coco_dt = _load_results(coco_gt, results)
    coco_eval = COCOeval(coco_gt, coco_dt, cast(_IoUType, iou_type))  # checked in __init__
    if oks_sigmas is not None:
        coco_eval.params.kpt_oks_sigmas = np.asarray(oks_sigmas, dtype=np.float64)
    coco_eval.params.imgIds = sorted(cast("Sequence[int]", image_ids))  # COCO's int ids
    coco_eval.params.useCats = int(use_cats)
    if max_dets is not None:
        coco_eval.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval
