"""tools/run_main_job.py: the shapes ground truth as COCO JSON, detections mapped back to the
original image, the slim export, and the recipe config's schedule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from detector.config import load_config
from detector.data.datasets import ShapesDataset
from detector.evaluation import COCOEvaluator
from detector.structures import Boxes, Instances

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "shapes" / "mask_rcnn_R_18_FPN_shapes.yaml"


def _load_job_module():
    spec = importlib.util.spec_from_file_location(
        "run_main_job", ROOT / "tools" / "run_main_job.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_main_job"] = module
    spec.loader.exec_module(module)
    return module


job = _load_job_module()


def test_coco_dict_matches_the_dataset() -> None:
    dataset = ShapesDataset(3, seed=5)
    coco = job.dataset_to_coco_dict(dataset)
    assert [c["name"] for c in coco["categories"]] == ["square", "circle", "triangle"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert [(im["id"], im["height"], im["width"]) for im in coco["images"]] == [
        (0, 128, 128),
        (1, 128, 128),
        (2, 128, 128),
    ]
    _, target, _ = dataset[1]
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(anns) == len(target)
    for ann, box, label, mask in zip(
        anns, target.gt_boxes.tensor, target.gt_classes, target.gt_masks.tensor, strict=True
    ):
        x1, y1, x2, y2 = box.tolist()
        assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert ann["category_id"] == int(label)
        assert ann["area"] == int(mask.sum())  # the mask's pixel count
    ids = [a["id"] for a in coco["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_ground_truth_as_predictions_scores_ap_one(tmp_path: Path) -> None:
    dataset = ShapesDataset(4, seed=3)
    gt_json = job.write_coco_json(dataset, tmp_path / "gt.json")
    evaluator = COCOEvaluator(gt_json, label_to_category_id={1: 1, 2: 2, 3: 3})
    evaluator.reset()
    for index in range(len(dataset)):
        _, target, meta = dataset[index]
        pred = Instances(
            target.image_size,
            pred_boxes=target.gt_boxes,
            scores=torch.ones(len(target)),
            pred_classes=target.gt_classes,
            pred_masks=target.gt_masks.tensor,
        )
        evaluator.process([meta["image_id"]], [pred])
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == pytest.approx(1.0)
    assert metrics["segm/AP"] == pytest.approx(1.0)


def test_to_original_size_scales_boxes_and_pastes_masks() -> None:
    # A detection on a 64x64 network input of a 128x96 (H, W) image.
    pred = Instances(
        (64, 64),
        pred_boxes=Boxes(torch.tensor([[8.0, 16.0, 40.0, 48.0]])),
        scores=torch.tensor([0.9]),
        pred_classes=torch.tensor([2]),
        pred_masks=torch.ones(1, 1, 28, 28),
    )
    out = job.to_original_size(pred, (128, 96))
    assert out.image_size == (128, 96)
    # x scales by 96/64 = 1.5, y by 128/64 = 2.
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[12.0, 32.0, 60.0, 96.0]]))
    assert out.pred_masks.shape == (1, 128, 96) and out.pred_masks.dtype == torch.bool
    rows = out.pred_masks[0].any(dim=1).nonzero()[:, 0]
    cols = out.pred_masks[0].any(dim=0).nonzero()[:, 0]
    # A full mask pasted at the box covers the box (paste's 1-pixel padding fades at the edge).
    assert abs(int(rows.min()) - 32) <= 1 and abs(int(rows.max()) - 95) <= 1
    assert abs(int(cols.min()) - 12) <= 1 and abs(int(cols.max()) - 59) <= 1


def test_slim_export_loads_with_weights_only(tmp_path: Path) -> None:
    cfg = load_config(RECIPE)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    path = job.export_slim_checkpoint(model, cfg, ["__background__", "a"], tmp_path / "s.pth")
    data = torch.load(path, weights_only=True)
    assert set(data) == {"model", "config", "class_names"}
    assert data["class_names"] == ["__background__", "a"]
    assert load_config_from_text(data["config"], tmp_path) == cfg
    for key, value in model.state_dict().items():
        torch.testing.assert_close(data["model"][key], value)


def load_config_from_text(text: str, folder: Path):
    path = folder / "resolved.yaml"
    path.write_text(text)
    return load_config(path)


def test_recipe_schedule_is_consistent() -> None:
    cfg = load_config(RECIPE)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.MASK_ON
    assert cfg.MODEL.WEIGHT == ""  # from scratch: nothing to download
    assert cfg.MODEL.RESNETS.NORM == "GN" and cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT == 0
    steps = list(cfg.SOLVER.STEPS)
    assert steps == sorted(steps) and steps[-1] < cfg.SOLVER.MAX_ITER
    assert cfg.SOLVER.WARMUP_ITERS < steps[0]
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES == 4
    assert list(cfg.DATASETS.TEST) == ["shapes_val"]
    spec = cfg.DATASETS.CUSTOM[cfg.DATASETS.TRAIN[0]]
    assert spec.FORMAT == "shapes" and spec.SEED != 1  # shapes_val is seed 1: no overlap


def test_eval_only_needs_weights(tmp_path: Path) -> None:
    args = job.parse_args(["--eval-only", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--weights"):
        job.run(args)
    assert not (tmp_path / "main_job_summary.json").exists()
