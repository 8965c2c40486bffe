"""COCO keypoint evaluation (OKS): ground truth fed back scores AP 1.0, perturbed predictions give
exactly pycocotools' 10 keypoint stats, custom sigmas are used, the shapes ground truth converts.

The keypoint annotations below are HAND-WRITTEN for this test: plausible person keypoints drawn
inside the official person boxes of two real COCO images of ../shared/data/coco-val2017-sample6
(000000404249: one person; 000000128372: a group). They are not COCO's own keypoint annotations
(the sample has none); an evaluation test needs only consistent ground truth on real images.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.config import load_config
from detector.data import get_dataset
from detector.data.datasets.keypoints import (
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_OKS_SIGMAS,
    COCO_PERSON_SKELETON,
)
from detector.evaluation import COCOEvaluator
from detector.evaluation.build import build_evaluator, dataset_to_coco_dict
from detector.structures import Boxes, Instances

KEYPOINT_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

# annotation id -> (image id, {keypoint: (x, y, v)}); unlisted keypoints are unlabeled (v = 0).
HAND_WRITTEN = {
    436111: (404249, {  # the big person, box [37, 123, 253, 400]
        "nose": (165, 172, 2), "left_eye": (176, 161, 2), "right_eye": (154, 161, 2),
        "left_ear": (191, 166, 1), "right_ear": (139, 166, 2), "left_shoulder": (221, 232, 2),
        "right_shoulder": (108, 230, 2), "left_elbow": (251, 311, 2), "right_elbow": (79, 308, 2),
        "left_wrist": (268, 382, 2), "right_wrist": (62, 379, 2), "left_hip": (201, 383, 2),
        "right_hip": (128, 381, 2), "left_knee": (209, 452, 2), "right_knee": (121, 449, 2),
        "left_ankle": (214, 514, 1), "right_ankle": (116, 516, 1),
    }),
    185837: (128372, {  # box [379, 202, 67, 178]
        "nose": (412, 215, 2), "left_eye": (416, 212, 2), "right_eye": (408, 212, 2),
        "left_ear": (421, 214, 1), "right_ear": (403, 214, 1), "left_shoulder": (430, 240, 2),
        "right_shoulder": (395, 241, 2), "left_elbow": (437, 275, 2), "right_elbow": (388, 276, 2),
        "left_wrist": (440, 305, 2), "right_wrist": (385, 304, 2), "left_hip": (425, 300, 2),
        "right_hip": (400, 301, 2), "left_knee": (427, 340, 2), "right_knee": (400, 341, 2),
        "left_ankle": (428, 375, 2), "right_ankle": (398, 374, 2),
    }),
    187883: (128372, {  # box [446, 222, 32, 98]
        "nose": (462, 230, 2), "left_eye": (464, 228, 2), "right_eye": (460, 228, 2),
        "left_shoulder": (470, 245, 2), "right_shoulder": (454, 245, 2),
        "left_elbow": (474, 265, 1), "right_elbow": (450, 266, 1), "left_hip": (468, 280, 2),
        "right_hip": (456, 281, 2), "left_knee": (469, 300, 2), "right_knee": (455, 300, 2),
        "left_ankle": (470, 318, 2), "right_ankle": (454, 317, 2),
    }),
    197843: (128372, {  # box [538, 209, 41, 128]: upper body only
        "nose": (558, 220, 2), "left_shoulder": (568, 240, 2), "right_shoulder": (548, 241, 2),
        "left_hip": (565, 280, 2), "right_hip": (551, 281, 2),
    }),
    214259: (128372, {}),  # box [595, 230, 16, 53]: no keypoint labeled (ignored by OKS)
}  # fmt: skip


def _flat_keypoints(points: dict[str, tuple[int, int, int]]) -> list[float]:
    flat: list[float] = []
    for name in COCO_PERSON_KEYPOINTS:
        flat += [float(v) for v in points.get(name, (0, 0, 0))]
    return flat


@pytest.fixture
def keypoint_json(shared_data: Path, tmp_path: Path) -> Path:
    """A person_keypoints-style JSON over the sample's images, with the hand-written keypoints
    on the official boxes and areas."""
    source = shared_data / "coco-val2017-sample6" / "annotations.json"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    sample = json.loads(source.read_text())
    official = {a["id"]: a for a in sample["annotations"]}
    annotations = []
    for ann_id, (image_id, points) in HAND_WRITTEN.items():
        real = official[ann_id]
        assert real["image_id"] == image_id and real["category_id"] == 1
        keypoints = _flat_keypoints(points)
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": 1, "bbox": real["bbox"],
            "area": real["area"], "iscrowd": 0, "keypoints": keypoints,
            "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
        })  # fmt: skip
    index = {name: k + 1 for k, name in enumerate(COCO_PERSON_KEYPOINTS)}
    category = {
        "id": 1, "name": "person", "supercategory": "person",
        "keypoints": list(COCO_PERSON_KEYPOINTS),
        "skeleton": [[index[a], index[b]] for a, b in COCO_PERSON_SKELETON],
    }  # fmt: skip
    images = [i for i in sample["images"] if i["id"] in (404249, 128372)]
    path = tmp_path / "person_keypoints_sample.json"
    data = {"images": images, "annotations": annotations, "categories": [category]}
    path.write_text(json.dumps(data))
    return path


def _detections(coco: COCO, records: list[dict]) -> dict[int, Instances]:
    """Per image, Instances of COCO-format keypoint detections (keypoints, score, bbox)."""
    out = {}
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        mine = [r for r in records if r["image_id"] == image_id]
        boxes = torch.tensor([r["bbox"] for r in mine], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        out[image_id] = Instances(
            (info["height"], info["width"]),
            pred_boxes=Boxes(boxes),
            scores=torch.tensor([r["score"] for r in mine], dtype=torch.float32),
            pred_classes=torch.ones(len(mine), dtype=torch.int64),
            pred_keypoints=torch.tensor([r["keypoints"] for r in mine]).reshape(len(mine), 17, 3),
        )
    return out


def _evaluate(path: Path, records: list[dict]) -> dict[str, float]:
    evaluator = COCOEvaluator(
        path, tasks=("bbox", "keypoints"), keypoint_oks_sigmas=COCO_PERSON_OKS_SIGMAS
    )
    coco = evaluator.coco_gt
    detections = _detections(coco, records)
    evaluator.process(list(detections), list(detections.values()))
    return evaluator.evaluate()


def test_ground_truth_as_predictions_scores_one(keypoint_json: Path) -> None:
    """Every person with labeled keypoints, fed back as a detection (the one without any is
    ignored by OKS, as COCOeval ignores num_keypoints = 0)."""
    coco = COCO(str(keypoint_json))
    records = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0,
         "keypoints": a["keypoints"]}
        for a in coco.dataset["annotations"] if a["num_keypoints"] > 0
    ]  # fmt: skip
    metrics = _evaluate(keypoint_json, records)
    assert metrics["keypoints/AP"] == pytest.approx(1.0)
    assert metrics["keypoints/AP50"] == pytest.approx(1.0)
    assert metrics["keypoints/AR"] == pytest.approx(1.0)
    assert metrics["keypoints/AP-person"] == pytest.approx(1.0)


def _perturbed(coco: COCO) -> list[dict]:
    """Each labeled person's keypoints moved by Gaussian noise of 3% of its box side (more for
    one person), scores in a fixed varied order, plus a false positive."""
    rng = np.random.default_rng(0)
    records = []
    for k, ann in enumerate(coco.dataset["annotations"]):
        points = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        side = np.sqrt(ann["bbox"][2] * ann["bbox"][3])
        noise = 0.03 * side * (4 if ann["id"] == 187883 else 1)
        points[:, :2] += rng.normal(0, noise, size=(17, 2))
        points[:, 2] = rng.uniform(0, 1, size=17)  # keypoint scores (COCOeval ignores them)
        score = [0.9, 0.3, 0.75, 0.6, 0.5][k]
        records.append({"image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"],
                        "score": score, "keypoints": points.ravel().tolist()})  # fmt: skip
    false_positive = np.zeros((17, 3))
    false_positive[:, 0] = rng.uniform(200, 300, 17)
    false_positive[:, 1] = rng.uniform(50, 150, 17)
    records.append({"image_id": 128372, "category_id": 1, "bbox": [200, 50, 100, 100],
                    "score": 0.8, "keypoints": false_positive.ravel().tolist()})  # fmt: skip
    return records


def test_perturbed_predictions_equal_pycocotools(keypoint_json: Path) -> None:
    coco = COCO(str(keypoint_json))
    records = _perturbed(coco)
    metrics = _evaluate(keypoint_json, records)
    # pycocotools on COCO's keypoint results format (no bbox: it takes the keypoints' extent)
    results = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco, coco.loadRes(results), "keypoints")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    ours = [metrics[f"keypoints/{key}"] for key in KEYPOINT_KEYS]
    expected = [v if v >= 0 else float("nan") for v in coco_eval.stats]
    np.testing.assert_array_equal(ours, expected)
    assert 0.2 < metrics["keypoints/AP"] < 0.95  # the perturbation matters, not everything lost


def test_custom_sigmas_change_oks(keypoint_json: Path) -> None:
    """Wider sigmas forgive the same errors: the evaluator uses the sigmas it is given."""
    coco = COCO(str(keypoint_json))
    records = _perturbed(coco)
    strict = _evaluate(keypoint_json, records)["keypoints/AP"]
    evaluator = COCOEvaluator(keypoint_json, tasks=("keypoints",), keypoint_oks_sigmas=[0.5] * 17)
    detections = _detections(evaluator.coco_gt, records)
    evaluator.process(list(detections), list(detections.values()))
    assert evaluator.evaluate()["keypoints/AP"] > strict


def test_keypoints_task_needs_sigmas(keypoint_json: Path) -> None:
    with pytest.raises(ValueError, match="needs keypoint_oks_sigmas"):
        COCOEvaluator(keypoint_json, tasks=("keypoints",))


def test_shapes_keypoint_ground_truth_converts_and_scores_one() -> None:
    cfg = load_config("configs/shapes/keypoint_rcnn_R_18_FPN_shapes.yaml")
    dataset = get_dataset("shapes_kp_val", cfg)
    coco, _ = dataset_to_coco_dict(dataset)
    assert coco["categories"][0]["keypoints"] == list(dataset.keypoint_meta.names)
    first = coco["annotations"][0]
    assert len(first["keypoints"]) == 18 and first["num_keypoints"] == sum(
        1 for v in first["keypoints"][2::3] if v > 0
    )
    evaluator = build_evaluator(cfg, "shapes_kp_val", dataset=dataset)
    assert evaluator.tasks == ("bbox", "keypoints")
    ids, predictions = [], []
    for index in range(len(dataset)):
        target = dataset.load_target(index)
        ids.append(dataset.get_meta(index)["image_id"])
        predictions.append(
            Instances(
                target.image_size,
                pred_boxes=target.gt_boxes,
                scores=torch.ones(len(target)),
                pred_classes=target.gt_classes,
                pred_keypoints=target.gt_keypoints.tensor,
            )
        )
    evaluator.process(ids, predictions)
    metrics = evaluator.evaluate()
    assert metrics["keypoints/AP"] == pytest.approx(1.0)
    assert metrics["bbox/AP"] == pytest.approx(1.0)
