"""VOCEvaluator: hand-computed cases (difficult objects, duplicates, a class without ground
truth, the IoU > 0.5 boundary in the devkit's "+1" convention, 07 vs area metric), and the real
BCCD set against a plain re-implementation."""

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector.evaluation import VOCEvaluator, voc_ap, voc_iou
from detector.structures import Boxes, Instances

IMAGE_SIZE = (200, 300)  # (height, width) of the synthetic images
CLASSES = ("cat", "dog", "bird")


def _write_voc(root: Path, images: dict[str, list[tuple]], split: str = "test") -> Path:
    """A VOC layout with one XML per image: objects (name, (xmin, ymin, xmax, ymax), difficult)
    in VOC's 1-based inclusive pixel indices."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in images.items():
        annotation = ET.Element("annotation")
        size = ET.SubElement(annotation, "size")
        ET.SubElement(size, "width").text = str(IMAGE_SIZE[1])
        ET.SubElement(size, "height").text = str(IMAGE_SIZE[0])
        for name, box, difficult in objects:
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = name
            ET.SubElement(obj, "difficult").text = str(int(difficult))
            bndbox = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
                ET.SubElement(bndbox, tag).text = str(value)
        ET.ElementTree(annotation).write(root / "Annotations" / f"{image_id}.xml")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


def _detections(boxes: list, scores: list, labels: list, size=IMAGE_SIZE) -> Instances:
    """Detections with continuous (x1, y1, x2, y2) boxes."""
    return Instances(
        size,
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.tensor(scores, dtype=torch.float32),
        pred_classes=torch.tensor(labels, dtype=torch.int64),
    )


def _continuous(voc_box) -> list[float]:
    """VOC pixel indices -> the continuous box the evaluator expects."""
    xmin, ymin, xmax, ymax = voc_box
    return [xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)]


G = (11, 11, 50, 50)  # a 40 x 40 pixel box
FAR = (151, 101, 190, 140)


@pytest.fixture
def hand_root(tmp_path: Path) -> Path:
    return _write_voc(
        tmp_path / "voc",
        {
            "img1": [("cat", G, False), ("bird", (1, 1, 10, 10), False)],
            "img2": [("cat", G, False), ("cat", FAR, True)],
            "img3": [],
        },
    )


def _process_hand_case(evaluator: VOCEvaluator) -> None:
    evaluator.process(["img1", "img2", "img3"], _hand_case_instances())


def _hand_case_instances() -> list[Instances]:
    cat, dog, bird = 1, 2, 3
    return [
        _detections(
            # cat 0.9 on G: TP; cat 0.8 on G again: duplicate, FP; dog: no dog anywhere;
            # bird: IoU exactly 0.5 (10 x 5 of 10 x 10 pixels, "+1"): FP; IoU 0.6: TP.
            [_continuous(G), _continuous(G), [5, 5, 40, 40], [0, 0, 10, 5], [0, 0, 10, 6]],
            [0.9, 0.8, 0.95, 0.9, 0.8],
            [cat, cat, dog, bird, bird],
        ),
        _detections(
            # cat 0.7 on the difficult box: ignored; 0.6 far from both: FP; 0.5 on G: TP.
            [_continuous(FAR), [100, 10, 130, 40], _continuous(G)],
            [0.7, 0.6, 0.5],
            [cat, cat, cat],
        ),
        _detections([], [], []),
    ]


def test_hand_computed_case(hand_root: Path, tmp_path: Path) -> None:
    evaluator = VOCEvaluator(hand_root, "test", CLASSES, use_07_metric=True, output_dir=tmp_path)
    _process_hand_case(evaluator)
    metrics = evaluator.evaluate()
    # cat: 2 positives (the difficult one does not count); outcomes by score TP FP FP TP:
    # recall .5 .5 .5 1, precision 1 .5 .33 .5.
    # 11-point: recall >= 0..0.5 (6 points) -> 1, >= 0.6..1 (5 points) -> .5: 8.5 / 11.
    # area: 0.5 * 1 + 0.5 * 0.5 = 0.75.
    # The headline (here VOC07) AP is logged once, under its plain name (was: twice, as mAP and
    # mAP_07); the other one has its suffix.
    assert metrics["bbox/AP-cat"] == pytest.approx(8.5 / 11)
    assert metrics["bbox/AP_area-cat"] == pytest.approx(0.75)
    # bird: 1 positive; FP (IoU exactly 0.5 is not > 0.5) then TP: precision .5 at recall 1.
    assert metrics["bbox/AP-bird"] == pytest.approx(0.5)
    assert metrics["bbox/AP_area-bird"] == pytest.approx(0.5)
    # dog: no ground truth -> NaN, left out of mAP.
    assert math.isnan(metrics["bbox/AP-dog"])
    assert metrics["bbox/mAP"] == pytest.approx((8.5 / 11 + 0.5) / 2)
    assert metrics["bbox/mAP_area"] == pytest.approx((0.75 + 0.5) / 2)
    assert not any("_07" in key for key in metrics)
    assert "cat" in evaluator.tables["AP per class"]

    assert (tmp_path / "voc_pr_curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "voc_metrics.json").read_text())
    assert saved["bbox/AP-dog"] is None and saved["bbox/mAP"] == metrics["bbox/mAP"]

    area = VOCEvaluator(hand_root, "test", CLASSES, use_07_metric=False)
    _process_hand_case(area)
    area_metrics = area.evaluate()
    assert area_metrics["bbox/mAP"] == pytest.approx((0.75 + 0.5) / 2)
    assert area_metrics["bbox/mAP_07"] == pytest.approx((8.5 / 11 + 0.5) / 2)
    assert area_metrics["bbox/AP-cat"] == pytest.approx(0.75)
    assert area_metrics["bbox/AP_07-cat"] == pytest.approx(8.5 / 11)
    assert not any("_area" in key for key in area_metrics)

    again = area.evaluate_saved(tmp_path / "voc_detections_results.json")
    assert again.keys() == area_metrics.keys()
    np.testing.assert_array_equal(list(again.values()), list(area_metrics.values()))


def test_difficult_detections_do_not_count(tmp_path: Path) -> None:
    root = _write_voc(tmp_path / "voc", {"a": [("cat", G, False), ("cat", FAR, True)]})
    evaluator = VOCEvaluator(root, "test", CLASSES)
    # The difficult box found first and alone: nothing is penalized, the real one is found.
    evaluator.process(["a"], [_detections([_continuous(FAR), _continuous(G)], [0.9, 0.1], [1, 1])])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP-cat"] == 1.0 and metrics["bbox/AP_area-cat"] == 1.0


def test_voc_ap_and_iou_by_hand() -> None:
    recall = np.array([0.5, 0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 1 / 3, 0.5])
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(8.5 / 11)
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.75)
    # Recall stops at 0.6: the 11-point metric adds 0 for t = 0.7..1.0.
    recall, precision = np.array([0.2, 0.6]), np.array([1.0, 0.75])
    assert voc_ap(recall, precision, True) == pytest.approx((3 * 1.0 + 4 * 0.75) / 11)
    assert voc_ap(recall, precision, False) == pytest.approx(0.2 * 1.0 + 0.4 * 0.75)
    gt = np.array([[1.0, 1.0, 10.0, 10.0], [11.0, 1.0, 20.0, 10.0]])
    # 10 x 10 pixels each; (1, 1, 10, 5) covers 50 of them; touching boxes share no pixel.
    np.testing.assert_allclose(voc_iou(np.array([1.0, 1.0, 10.0, 5.0]), gt), [0.5, 0.0])
    np.testing.assert_allclose(voc_iou(np.array([6.0, 1.0, 15.0, 10.0]), gt), [50 / 150] * 2)


def test_errors(hand_root: Path, tmp_path: Path) -> None:
    evaluator = VOCEvaluator(hand_root, "test", CLASSES)
    with pytest.raises(KeyError, match="image id 'img9' is not in .*test.txt"):
        evaluator.process(["img9"], [_detections([[0, 0, 5, 5]], [0.5], [1])])
    with pytest.raises(KeyError, match=r"label 4 \(image 'img1'\) is outside 1\.\.3"):
        evaluator.process(["img1"], [_detections([[0, 0, 5, 5]], [0.5], [4])])
    with pytest.raises(KeyError, match="label 0"):
        evaluator.process(["img1"], [_detections([[0, 0, 5, 5]], [0.5], [0])])
    with pytest.raises(ValueError, match="image 'img1' have image_size"):
        evaluator.process(["img1"], [_detections([[0, 0, 5, 5]], [0.5], [1], size=(10, 10))])
    assert evaluator.image_ids == []  # failed images are not recorded
    with pytest.raises(FileNotFoundError, match="splits there: \\['test'\\]"):
        VOCEvaluator(hand_root, "trainval", CLASSES)
    bad = _write_voc(tmp_path / "bad", {"x": [("horse", G, False)]})
    with pytest.raises(ValueError, match="x.xml: object 0 has class 'horse'"):
        VOCEvaluator(bad, "test", CLASSES).ground_truth()
    saved = tmp_path / "bad.json"
    saved.write_text(
        json.dumps([{"image_id": "img1", "class_name": "cow", "bbox": [0] * 4, "score": 1}])
    )
    with pytest.raises(KeyError, match="record 0: class 'cow'"):
        evaluator.evaluate_saved(saved)


# --------------------------------------------------------------------------------------------
# BCCD: real VOC data
# --------------------------------------------------------------------------------------------
BCCD_CLASSES = ("RBC", "WBC", "Platelets")


@pytest.fixture
def bccd_root(shared_data: Path) -> Path:
    root = shared_data / "bccd" / "BCCD"
    if not (root / "Annotations").is_dir():
        pytest.skip(f"{root} not found")
    return root


def _bccd_ground_truth(root: Path, split: str) -> dict[str, list[tuple[int, list[float], bool]]]:
    """image id -> [(label, continuous box, difficult)] read with plain ElementTree."""
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    out = {}
    for image_id in ids:
        objects = []
        for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            box = [float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            label = BCCD_CLASSES.index(obj.findtext("name")) + 1
            objects.append((label, _continuous(box), obj.findtext("difficult") == "1"))
        out[image_id] = objects
    return out


def _ap_by_hand(outcomes: list[int], positives: int) -> tuple[float, float]:
    """(11-point AP, area AP) of TP (1) / FP (0) outcomes in decreasing score: the area AP is
    the sum, over true positives, of 1/positives times the best precision at or after it."""
    hits = np.cumsum(outcomes)
    precision = hits / np.arange(1, len(outcomes) + 1)
    recall = hits / positives
    area = sum(precision[i:].max() / positives for i, hit in enumerate(outcomes) if hit)
    eleven = 0.0
    for t in range(11):
        reached = recall >= t / 10
        eleven += precision[reached].max() if reached.any() else 0.0
    return eleven / 11, area


def _bccd_by_hand(gt, detections) -> dict[str, tuple[float, float]]:
    """Per class: continuous IoU (torchvision box_iou, no "+1") and greedy VOC matching."""
    result = {}
    for label, name in enumerate(BCCD_CLASSES, start=1):
        mine = [
            (score, image_id, box)
            for image_id, (boxes, scores, labels) in detections.items()
            for box, score, lab in zip(boxes, scores, labels, strict=True)
            if lab == label
        ]
        mine.sort(key=lambda d: -d[0])  # stable: ties keep processing order
        taken = {image_id: set() for image_id in gt}
        positives = sum(lab == label and not diff for objs in gt.values() for lab, _, diff in objs)
        outcomes = []
        for _, image_id, box in mine:
            objs = [(b, diff) for lab, b, diff in gt[image_id] if lab == label]
            if not objs:
                outcomes.append(0)
                continue
            gt_boxes = torch.tensor([b for b, _ in objs], dtype=torch.float64)
            ious = box_iou(torch.tensor([box], dtype=torch.float64), gt_boxes)[0]
            best = int(ious.argmax())
            if ious[best] <= 0.5:
                outcomes.append(0)
            elif objs[best][1]:
                continue
            elif best in taken[image_id]:
                outcomes.append(0)  # duplicate
            else:
                taken[image_id].add(best)
                outcomes.append(1)
        result[name] = _ap_by_hand(outcomes, positives)
    return result


def _bccd_detections(gt, perturb: bool, seed: int = 0):
    """image id -> (boxes, scores, labels) as lists: the ground truth, or (perturb) jittered
    boxes, dropped and duplicated ones, false positives of any class, random scores."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, objects in gt.items():
        boxes, labels = [], []
        for label, box, _ in objects:
            if perturb and rng.random() < 0.1:
                continue
            if perturb:
                w, h = box[2] - box[0], box[3] - box[1]
                box = (np.asarray(box) + rng.normal(0, 0.12, 4) * [w, h, w, h]).tolist()
            copies = 2 if perturb and rng.random() < 0.1 else 1
            boxes += [box] * copies
            labels += [label] * copies
        for _ in range(int(rng.integers(0, 4)) if perturb else 0):
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            boxes.append([x, y, x + rng.uniform(10, 80), y + rng.uniform(10, 80)])
            labels.append(int(rng.integers(1, 4)))
        scores = rng.random(len(boxes)) if perturb else np.ones(len(boxes))
        # Scores and boxes as float32 values, as the evaluator will see them.
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4).tolist()
        out[image_id] = (boxes, torch.tensor(scores, dtype=torch.float32).tolist(), labels)
    return out


def _run_bccd(root: Path, detections, use_07_metric: bool) -> dict[str, float]:
    evaluator = VOCEvaluator(root, "val", BCCD_CLASSES, use_07_metric=use_07_metric)
    for image_id, (boxes, scores, labels) in detections.items():
        evaluator.process([image_id], [_detections(boxes, scores, labels, size=(480, 640))])
    return evaluator.evaluate()


def test_bccd_ground_truth_scores_one(bccd_root: Path) -> None:
    gt = _bccd_ground_truth(bccd_root, "val")
    assert any(box[0] + 1 == box[2] for objs in gt.values() for _, box, _ in objs)  # 1-px box
    metrics = _run_bccd(bccd_root, _bccd_detections(gt, perturb=False), use_07_metric=True)
    for name in BCCD_CLASSES:
        assert metrics[f"bbox/AP-{name}"] == pytest.approx(1.0, abs=1e-12)  # VOC07
        assert metrics[f"bbox/AP_area-{name}"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["bbox/mAP"] == pytest.approx(1.0, abs=1e-12)


def test_bccd_perturbed_matches_plain_computation(bccd_root: Path) -> None:
    gt = _bccd_ground_truth(bccd_root, "val")
    detections = _bccd_detections(gt, perturb=True)
    metrics = _run_bccd(bccd_root, detections, use_07_metric=False)
    expected = _bccd_by_hand(gt, detections)
    for name, (ap07, ap_area) in expected.items():
        assert 0.2 < ap_area < 0.98, name  # a real, imperfect score
        assert metrics[f"bbox/AP_07-{name}"] == pytest.approx(ap07, abs=1e-9)
        assert metrics[f"bbox/AP-{name}"] == pytest.approx(ap_area, abs=1e-9)
    assert metrics["bbox/mAP"] == pytest.approx(np.mean([v[1] for v in expected.values()]))


def test_merged_states_equal_one_evaluator(hand_root: Path) -> None:
    """Two evaluators sharing the images (as two processes would) give, merged, the metrics of
    one evaluator that saw everything."""
    whole = VOCEvaluator(hand_root, "test", CLASSES)
    _process_hand_case(whole)
    first, second = (
        VOCEvaluator(hand_root, "test", CLASSES),
        VOCEvaluator(hand_root, "test", CLASSES),
    )
    for image_id, instances in zip(whole.image_ids, _hand_case_instances(), strict=True):
        (first if image_id == "img2" else second).process([image_id], [instances])
    first.merge_state(json.loads(json.dumps(second.state())))
    merged = first.evaluate()
    np.testing.assert_array_equal(list(merged.values()), list(whole.evaluate().values()))
    with pytest.raises(ValueError, match="processed by both"):
        first.merge_state(second.state())
