"""detector.evaluation.build: datasets as COCO ground truth, the evaluator of each dataset kind,
and the trainer's evaluate_fn."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torch import nn

from detector.config import get_cfg, merge_opts
from detector.data import DatasetError, DetectionDataset, ShapesDataset, get_dataset
from detector.engine.evaluate import make_evaluate_fn
from detector.evaluation import (
    COCOEvaluator,
    DatasetCOCOEvaluator,
    VOCEvaluator,
    build_evaluator,
    dataset_to_coco_dict,
    dataset_to_coco_json,
)
from detector.structures import Boxes, Instances


def _ground_truth_as_predictions(target: Instances) -> Instances:
    masks = target.gt_masks.to_bitmasks(*target.image_size).tensor  # (R, H, W) bool
    return Instances(
        target.image_size,
        pred_boxes=target.gt_boxes,
        scores=torch.linspace(1.0, 0.5, len(target)),
        pred_classes=target.gt_classes,
        pred_masks=masks,
    )


def test_shapes_to_coco_json_then_ground_truth_scores_ap_1(tmp_path):
    dataset = ShapesDataset(5, seed=3)
    path = tmp_path / "gt.json"
    id_map = dataset_to_coco_json(dataset, path)
    assert id_map == {i: i for i in range(5)}
    coco = json.loads(path.read_text())
    assert [c["name"] for c in coco["categories"]] == ["square", "circle", "triangle"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert [im["id"] for im in coco["images"]] == [0, 1, 2, 3, 4]
    assert all((im["height"], im["width"]) == (128, 128) for im in coco["images"])
    _, target, _ = dataset[2]
    annotations = [a for a in coco["annotations"] if a["image_id"] == 2]
    assert len(annotations) == len(target)
    masks = target.gt_masks.tensor.numpy()
    for k, annotation in enumerate(annotations):
        x1, y1, x2, y2 = target.gt_boxes.tensor[k].tolist()
        assert annotation["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert annotation["category_id"] == int(target.gt_classes[k])
        assert annotation["iscrowd"] == 0
        assert annotation["area"] == pytest.approx(masks[k].sum())
        assert np.array_equal(mask_util.decode(annotation["segmentation"]), masks[k])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    evaluator = COCOEvaluator(path, tasks=("bbox", "segm"))
    for index in range(len(dataset)):
        _, target, meta = dataset[index]
        evaluator.process([meta["image_id"]], [_ground_truth_as_predictions(target)])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert metrics["segm/AP"] == pytest.approx(1.0)
    assert metrics["bbox/AP50"] == pytest.approx(1.0)


class StringIds(DetectionDataset):
    """Two 20 x 30 images named by strings; the second has one difficult box; no masks."""

    class_names = ["__background__", "cell"]

    def __len__(self) -> int:
        return 2

    def get_image_size(self, index: int) -> tuple[int, int]:
        return 20, 30

    def load_image(self, index: int) -> torch.Tensor:
        return torch.zeros(3, 20, 30, dtype=torch.uint8)

    def load_target(self, index: int) -> Instances:
        boxes = [[1.0, 2.0, 11.0, 7.0]] if index == 0 else [[0.0, 0.0, 4.0, 4.0], [5, 5, 25, 15]]
        return Instances(
            (20, 30),
            gt_boxes=Boxes(torch.tensor(boxes)),
            gt_classes=torch.ones(len(boxes), dtype=torch.int64),
            difficult=torch.tensor([False] if index == 0 else [True, False]),
        )

    def get_meta(self, index: int) -> dict[str, Any]:
        return {"image_id": f"img{index}", "file_name": f"f{index}.png", "height": 20, "width": 30}


def test_string_ids_and_difficult_objects():
    coco, id_map = dataset_to_coco_dict(StringIds())
    assert id_map == {"img0": 1, "img1": 2}
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1, 0]
    assert [a["area"] for a in coco["annotations"]] == [50.0, 16.0, 200.0]
    assert all("segmentation" not in a for a in coco["annotations"])


def test_converted_evaluator_accepts_the_dataset_ids(tmp_path):
    cfg = get_cfg()
    dataset = StringIds()
    evaluator = build_evaluator(cfg, "string_ids", tmp_path, dataset=dataset)
    assert isinstance(evaluator, DatasetCOCOEvaluator) and evaluator.tasks == ("bbox",)
    assert (tmp_path / "ground_truth_coco.json").is_file()
    for index in range(2):
        target = dataset.load_target(index)
        keep = ~target.difficult
        prediction = Instances(
            (20, 30),
            pred_boxes=target.gt_boxes[keep],
            scores=torch.ones(int(keep.sum())),
            pred_classes=target.gt_classes[keep],
        )
        evaluator.process([dataset.get_meta(index)["image_id"]], [prediction])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == pytest.approx(1.0)  # the difficult box is not a miss
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert sorted(r["image_id"] for r in saved) == [1, 2]
    again = evaluator.evaluate_saved(tmp_path / "coco_instances_results.json")
    np.testing.assert_equal(again, metrics)  # NaN (no medium/large object) equals NaN
    with pytest.raises(KeyError, match="img7"):
        evaluator.process(["img7"], [prediction])


def test_converted_evaluator_without_output_dir_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluator = build_evaluator(get_cfg(), "string_ids", dataset=StringIds())
    assert evaluator.output_dir is None and len(evaluator.coco_gt.imgs) == 2
    assert not evaluator.annotation_json.exists()  # a removed temporary file
    assert list(tmp_path.iterdir()) == []


def test_evaluator_kinds(tmp_path, shared_data):
    cfg = get_cfg()
    coco = build_evaluator(cfg, "coco_sample6", tmp_path / "a")
    assert type(coco) is COCOEvaluator and coco.tasks == ("bbox",)
    dataset = get_dataset("coco_sample6", cfg)
    assert coco.label_to_category_id == dataset.contiguous_to_category_id
    masked = build_evaluator(merge_opts(cfg, ["MODEL.MASK_ON", "true"]), "coco_sample6")
    assert masked.tasks == ("bbox", "segm")

    voc = build_evaluator(cfg, "bccd_test", tmp_path / "b")
    assert type(voc) is VOCEvaluator
    assert voc.class_names == ["RBC", "WBC", "Platelets"] and voc.split == "test"
    assert voc.use_07_metric and voc.output_dir == tmp_path / "b"
    area = build_evaluator(merge_opts(cfg, ["TEST.VOC_USE_07_METRIC", "false"]), "bccd_test")
    assert not area.use_07_metric

    rpn = build_evaluator(merge_opts(cfg, ["MODEL.RPN_ONLY", "true"]), "bccd_test", tmp_path / "c")
    assert isinstance(rpn, DatasetCOCOEvaluator)
    assert (tmp_path / "c" / "ground_truth_coco.json").is_file()
    # voc-sample2 has no split file: converted, with string ids (file stems).
    no_split = build_evaluator(cfg, "voc_sample2")
    assert isinstance(no_split, DatasetCOCOEvaluator) and len(no_split.image_id_map) == 2


def test_shapes_evaluator_is_converted(tmp_path):
    cfg = merge_opts(get_cfg(), ["MODEL.MASK_ON", "true"])
    evaluator = build_evaluator(cfg, "shapes_val", tmp_path)
    assert isinstance(evaluator, DatasetCOCOEvaluator)
    assert evaluator.tasks == ("bbox", "segm") and len(evaluator.coco_gt.imgs) == 64


class Nothing(nn.Module):
    """Detects nothing, in any image."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, images: list[torch.Tensor]) -> list[Instances]:
        return [
            Instances(
                tuple(image.shape[-2:]),
                pred_boxes=Boxes(torch.zeros(0, 4)),
                scores=torch.zeros(0),
                pred_classes=torch.zeros(0, dtype=torch.int64),
            )
            for image in images
        ]


def test_make_evaluate_fn_prefixes_each_dataset(tmp_path):
    cfg = merge_opts(
        get_cfg(),
        [
            "OUTPUT_DIR", str(tmp_path), "TEST.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.CUSTOM", "{a: {FORMAT: shapes, NUM_IMAGES: 2, SEED: 1},"
            " b: {FORMAT: shapes, NUM_IMAGES: 3, SEED: 2}}",
            "DATASETS.TEST", "(a, b)", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "4",
        ],
    )  # fmt: skip
    evaluate_fn = make_evaluate_fn(cfg)
    metrics = evaluate_fn(Nothing())
    assert metrics["a/bbox/AP"] == 0.0 and metrics["b/bbox/AP"] == 0.0
    assert all(key.split("/")[0] in ("a", "b") for key in metrics)
    assert (tmp_path / "inference" / "a" / "coco_metrics.json").is_file()
    assert (tmp_path / "inference" / "b" / "ground_truth_coco.json").is_file()
    np.testing.assert_equal(evaluate_fn(Nothing()), metrics)  # a second run starts afresh

    single = make_evaluate_fn(merge_opts(cfg, ["DATASETS.TEST", "(a,)"]))
    assert "bbox/AP" in single(Nothing())


def test_make_evaluate_fn_rejects_unknown_names_and_missing_files_at_once(tmp_path):
    cfg = merge_opts(get_cfg(), ["DATASETS.TEST", "(shapes_vall,)"])
    with pytest.raises(DatasetError, match="Did you mean 'shapes_val'"):
        make_evaluate_fn(cfg)
    missing = tmp_path / "nowhere.json"
    cfg = merge_opts(
        get_cfg(),
        ["DATASETS.CUSTOM", f"{{mine: {{FORMAT: coco, ANN_FILE: {missing}, IMAGE_DIR: x}}}}",
         "DATASETS.TEST", "(mine,)"],
    )  # fmt: skip
    with pytest.raises(DatasetError, match="nowhere.json"):
        make_evaluate_fn(cfg)


def test_rpn_only_models_are_scored_by_proposal_recall(tmp_path):
    cfg = merge_opts(get_cfg(), ["MODEL.RPN_ONLY", "true"])
    dataset = ShapesDataset(3, seed=4)
    evaluator = build_evaluator(cfg, "shapes", tmp_path, dataset=dataset)
    for index in range(len(dataset)):
        _, target, meta = dataset[index]
        proposals = Instances(
            target.image_size,
            proposal_boxes=target.gt_boxes,
            objectness_logits=torch.zeros(len(target)),
        )
        evaluator.process([meta["image_id"]], [proposals])
    metrics = evaluator.evaluate()
    assert metrics["AR@100"] == pytest.approx(1.0) and metrics["AR@1000"] == pytest.approx(1.0)
    assert not any(key.startswith("bbox/") for key in metrics)
    assert (tmp_path / "coco_proposals_results.json").is_file()
