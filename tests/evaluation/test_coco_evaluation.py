"""COCOEvaluator on the real COCO sample (polygons, one crowd RLE region, an image without
annotations): ground truth scores 1.0, perturbed predictions score exactly what pycocotools'
COCOeval gives on the same JSON files, proposal recall against a plain re-implementation."""

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from detector.evaluation import COCOEvaluator
from detector.structures import Boxes, Instances

SUMMARY_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR@1", "AR@10", "AR@100", "ARs@100", "ARm@100", "ARl@100",
)  # fmt: skip


@pytest.fixture
def annotation_json(shared_data: Path) -> Path:
    path = shared_data / "coco-val2017-sample6" / "annotations.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture
def evaluator(annotation_json: Path) -> COCOEvaluator:
    return COCOEvaluator(annotation_json)


def _label_of(evaluator: COCOEvaluator) -> dict[int, int]:
    return {cat: label for label, cat in evaluator.label_to_category_id.items()}


def _image_hw(coco: COCO, image_id: int) -> tuple[int, int]:
    return coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]


def _xywh_to_xyxy(boxes: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def _instances(coco, image_id, label_of, dets: list[dict], masks=None) -> Instances:
    """Instances from COCO-format detections of one image (and their full-size masks)."""
    height, width = _image_hw(coco, image_id)
    instances = Instances(
        (height, width),
        pred_boxes=Boxes(_xywh_to_xyxy([d["bbox"] for d in dets])),
        scores=torch.tensor([d["score"] for d in dets], dtype=torch.float32),
        pred_classes=torch.tensor([label_of[d["category_id"]] for d in dets], dtype=torch.int64),
    )
    if masks is not None:
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
        instances.pred_masks = torch.from_numpy(stacked).to(torch.uint8)
    return instances


def _ground_truth_predictions(evaluator: COCOEvaluator) -> tuple[list[int], list[Instances]]:
    coco, label_of = evaluator.coco_gt, _label_of(evaluator)
    ids, preds = [], []
    for image_id in sorted(coco.imgs):
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        dets = [{"bbox": a["bbox"], "score": 1.0, "category_id": a["category_id"]} for a in anns]
        masks = [coco.annToMask(a) for a in anns]
        ids.append(image_id)
        preds.append(_instances(coco, image_id, label_of, dets, masks))
    return ids, preds


def test_ground_truth_as_predictions_scores_one(evaluator: COCOEvaluator) -> None:
    ids, preds = _ground_truth_predictions(evaluator)
    assert any(len(p) == 0 for p in preds)  # image 89 has no annotation
    evaluator.process(ids[:3], preds[:3])
    evaluator.process(ids[3:], preds[3:])
    metrics = evaluator.evaluate()
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@100"):
            assert metrics[f"{task}/{key}"] == pytest.approx(1.0, abs=1e-12), (task, key)
        assert metrics[f"{task}/AP-bottle"] == 1.0
        assert math.isnan(metrics[f"{task}/AP-airplane"])  # no ground truth
        assert metrics[f"{task}/AR@1"] < 1.0  # images with several objects
    assert "bottle" in evaluator.tables["bbox AP per category"]


def _perturbed(coco: COCO, seed: int = 0) -> dict[int, tuple[list[dict], list[np.ndarray]]]:
    """Per image: COCO-format detections (jittered ground truth on a 0.25 px grid, so that
    float32 holds them exactly; dropped, duplicated and extra ones; random scores) and masks."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(coco.getCatIds())

    def grid(v: float) -> float:
        return round(v * 4) / 4

    out = {}
    for image_id in sorted(coco.imgs):
        height, width = _image_hw(coco, image_id)
        dets, masks = [], []
        for ann in coco.imgToAnns[image_id]:
            if ann["iscrowd"] or rng.random() < 0.2:  # dropped
                continue
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0.0, 0.08, size=4) * np.array([w, h, w, h])
            box = [grid(x + jitter[0]), grid(y + jitter[1])]
            box += [max(grid(w + jitter[2]), 1.0), max(grid(h + jitter[3]), 1.0)]
            shift = rng.integers(-3, 4, size=2)
            mask = np.roll(coco.annToMask(ann), (int(shift[0]), int(shift[1])), axis=(0, 1))
            copies = 2 if rng.random() < 0.2 else 1  # duplicates are false positives
            for _ in range(copies):
                dets.append({"category_id": ann["category_id"], "bbox": box})
                masks.append(mask)
        for _ in range(int(rng.integers(1, 4))):  # extra detections, any category
            x, y = grid(rng.uniform(0, width - 40)), grid(rng.uniform(0, height - 40))
            w, h = grid(rng.uniform(5, 40)), grid(rng.uniform(5, 40))
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
            dets.append({"category_id": int(rng.choice(category_ids)), "bbox": [x, y, w, h]})
            masks.append(mask)
        for det in dets:
            det["image_id"] = image_id
            det["score"] = float(np.float32(rng.random()))
        out[image_id] = (dets, masks)
    return out


def _pycocotools_stats(annotation_json: Path, results_json: Path, iou_type: str) -> np.ndarray:
    coco_gt = COCO(str(annotation_json))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_json)), iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats


def test_perturbed_predictions_match_pycocotools(
    evaluator: COCOEvaluator, annotation_json: Path, tmp_path: Path
) -> None:
    coco, label_of = evaluator.coco_gt, _label_of(evaluator)
    perturbed = _perturbed(coco)
    bbox_results, segm_results = [], []
    for image_id, (dets, masks) in perturbed.items():
        evaluator.process([image_id], [_instances(coco, image_id, label_of, dets, masks)])
        bbox_results += dets
        for det, mask in zip(dets, masks, strict=True):
            rle = mask_util.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            without_box = {k: v for k, v in det.items() if k != "bbox"}
            segm_results.append({**without_box, "segmentation": rle})
    (tmp_path / "bbox.json").write_text(json.dumps(bbox_results))
    (tmp_path / "segm.json").write_text(json.dumps(segm_results))

    metrics = evaluator.evaluate()
    for task, name in (("bbox", "bbox.json"), ("segm", "segm.json")):
        stats = _pycocotools_stats(annotation_json, tmp_path / name, task)
        assert 0.2 < stats[0] < 0.95  # a real, imperfect score
        ours = [metrics[f"{task}/{key}"] for key in SUMMARY_KEYS]
        expected = [float(v) if v >= 0 else math.nan for v in stats]
        np.testing.assert_array_equal(ours, expected)


def test_evaluate_saved_gives_the_same_metrics(evaluator, annotation_json, tmp_path) -> None:
    coco, label_of = evaluator.coco_gt, _label_of(evaluator)
    evaluator.output_dir = tmp_path
    for image_id, (dets, masks) in _perturbed(coco, seed=1).items():
        evaluator.process([image_id], [_instances(coco, image_id, label_of, dets, masks)])
    metrics = evaluator.evaluate()
    saved = tmp_path / "coco_instances_results.json"
    records = json.loads(saved.read_text())
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(records[0])
    assert json.loads((tmp_path / "coco_metrics.json").read_text())["bbox/AP"] == metrics["bbox/AP"]
    assert (tmp_path / "coco_pr_bbox.png").stat().st_size > 0
    assert (tmp_path / "coco_pr_segm.png").stat().st_size > 0

    again = COCOEvaluator(annotation_json).evaluate_saved(saved)
    assert again.keys() == metrics.keys()
    np.testing.assert_array_equal(list(again.values()), list(metrics.values()))


def _recall_by_hand(coco: COCO, proposals: dict[int, tuple[torch.Tensor, torch.Tensor]], top: int):
    """COCO average recall, class-agnostic, written plainly: per IoU threshold, each image's
    top proposals (by score) take, in turn, the unmatched non-crowd box they overlap most
    (IoU >= threshold); recall = matched boxes / non-crowd boxes, averaged over thresholds."""
    thresholds = np.linspace(0.5, 0.95, 10)
    matched = np.zeros(len(thresholds))
    total = 0
    for image_id, (boxes, scores) in proposals.items():
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        total += len(anns)
        if not anns or len(boxes) == 0:
            continue
        gt = _xywh_to_xyxy([a["bbox"] for a in anns]).double()
        order = torch.argsort(scores, descending=True, stable=True)[:top]
        iou = box_iou(boxes[order].double(), gt).numpy()  # (top, G)
        for t, threshold in enumerate(thresholds):
            taken = np.zeros(len(anns), dtype=bool)
            for row in iou:
                candidates = np.where(~taken & (row >= threshold), row, -1.0)
                if candidates.max() >= 0:
                    taken[int(candidates.argmax())] = True
            matched[t] += taken.sum()
    return float(np.mean(matched / total))


def test_proposal_recall(evaluator: COCOEvaluator) -> None:
    coco = evaluator.coco_gt
    rng = np.random.default_rng(3)
    gt_props, noisy = {}, {}
    for image_id in sorted(coco.imgs):
        height, width = _image_hw(coco, image_id)
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        gt_boxes = _xywh_to_xyxy([a["bbox"] for a in anns])
        gt_props[image_id] = (gt_boxes, torch.ones(len(anns)))
        jitter = torch.from_numpy(rng.normal(0, 6.0, size=(len(anns) * 8, 4))).float()
        near = gt_boxes.repeat(8, 1) + jitter
        xy = torch.from_numpy(rng.uniform(0, [width, height], size=(400, 2))).float()
        far = torch.cat([xy, xy + torch.from_numpy(rng.uniform(4, 80, size=(400, 2)))], 1)
        boxes = torch.cat([near, far.float()])
        logits = rng.normal(size=len(boxes)) + np.where(np.arange(len(boxes)) < len(near), 1.5, 0)
        noisy[image_id] = (boxes, torch.from_numpy(logits).float())

    for proposals, expected in ((gt_props, None), (noisy, "by hand")):
        evaluator.reset()
        for image_id, (boxes, logits) in proposals.items():
            instances = Instances(
                _image_hw(coco, image_id), proposal_boxes=Boxes(boxes), objectness_logits=logits
            )
            evaluator.process([image_id], [instances])
        metrics = evaluator.evaluate()
        assert not any(key.startswith("bbox/") for key in metrics)
        if expected is None:
            assert metrics["AR@100"] == 1.0 and metrics["AR@1000"] == 1.0
        else:
            for top in (100, 1000):
                by_hand = _recall_by_hand(coco, proposals, top)
                assert metrics[f"AR@{top}"] == pytest.approx(by_hand, abs=1e-12)
            assert 0.1 < metrics["AR@100"] < metrics["AR@1000"] < 1.0
            assert {"ARs@1000", "ARm@1000", "ARl@1000"} <= metrics.keys()


def test_no_detections_score_zero(evaluator: COCOEvaluator) -> None:
    coco = evaluator.coco_gt
    for image_id in sorted(coco.imgs):
        height, width = _image_hw(coco, image_id)
        empty = Instances(
            (height, width),
            pred_boxes=Boxes(torch.zeros(0, 4)),
            scores=torch.zeros(0),
            pred_classes=torch.zeros(0, dtype=torch.int64),
        )
        evaluator.process([image_id], [empty])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == 0.0
    assert "segm/AP" not in metrics  # no masks: segm is skipped


def _one_detection(image_size, label: int) -> Instances:
    return Instances(
        image_size,
        pred_boxes=Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]])),
        scores=torch.tensor([0.9]),
        pred_classes=torch.tensor([label]),
    )


def test_errors_name_the_image_id_and_label(evaluator: COCOEvaluator, tmp_path: Path) -> None:
    size = _image_hw(evaluator.coco_gt, 89)
    with pytest.raises(KeyError, match="image id 123456 is not in"):
        evaluator.process([123456], [_one_detection(size, 1)])
    with pytest.raises(KeyError, match=r"label 81 \(image 89\).*1\.\.80"):
        evaluator.process([89], [_one_detection(size, 81)])
    with pytest.raises(KeyError, match=r"label 0 \(image 89\)"):
        evaluator.process([89], [_one_detection(size, 0)])
    with pytest.raises(ValueError, match="image 89 have image_size"):
        evaluator.process([89], [_one_detection((100, 100), 1)])
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process([89, 89], [_one_detection(size, 1)] * 2)

    saved = tmp_path / "bad.json"
    saved.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(KeyError, match="record 0: image id 7 is not in"):
        evaluator.evaluate_saved(saved)


def test_custom_label_mapping(annotation_json: Path) -> None:
    evaluator = COCOEvaluator(annotation_json, tasks=("bbox",), label_to_category_id={1: 44})
    coco = evaluator.coco_gt
    bottles = [a for a in coco.imgToAnns[464689] if not a["iscrowd"]]
    dets = [{"bbox": a["bbox"], "score": 1.0, "category_id": 44} for a in bottles]
    instances = _instances(coco, 464689, {44: 1}, dets)
    evaluator.process([464689], [instances])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP-bottle"] == 1.0
    with pytest.raises(KeyError, match="label 2"):
        evaluator.process([89], [_one_detection(_image_hw(coco, 89), 2)])
    with pytest.raises(ValueError, match=r"category ids \[1000\]"):
        COCOEvaluator(annotation_json, label_to_category_id={1: 1000})


def test_mask_layouts(evaluator: COCOEvaluator) -> None:
    """Pasted masks may come as (R, H, W) uint8/bool or (R, 1, H, W) probabilities (cut at
    0.5); unpasted (R, 1, 28, 28) masks are an error naming the image."""
    coco, label_of = evaluator.coco_gt, _label_of(evaluator)
    image_id = 194216
    anns = coco.imgToAnns[image_id]
    dets = [{"bbox": a["bbox"], "score": 0.5, "category_id": a["category_id"]} for a in anns]
    masks = [coco.annToMask(a) for a in anns]
    evaluator.process([image_id], [_instances(coco, image_id, label_of, dets, masks)])
    as_uint8 = evaluator.records["instances"]
    expected = [coco.annToRLE(a) for a in anns]
    expected = [{"size": r["size"], "counts": r["counts"].decode()} for r in expected]
    assert [r["segmentation"] for r in as_uint8] == expected

    evaluator.reset()
    probabilities = _instances(coco, image_id, label_of, dets, masks)
    probabilities.pred_masks = probabilities.pred_masks[:, None].float() * 0.4 + 0.3
    evaluator.process([image_id], [probabilities])
    assert evaluator.records["instances"] == as_uint8

    evaluator.reset()
    probabilities.pred_masks = torch.rand(len(anns), 1, 28, 28)
    with pytest.raises(ValueError, match=r"pred_masks of image 194216 .* \(R, 294, 640\)"):
        evaluator.process([image_id], [probabilities])
