"""configs/bccd/ (Faster R-CNN on BCCD, VOC format) and configs/dsb2018/ (Mask R-CNN on DSB2018
nuclei, per-instance PNG masks): the configs are consistent with their data, and each trains a
few iterations end to end on the CPU, then evaluates, on a few real images of ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detector.config import load_config, merge_opts
from detector.data import get_dataset
from detector.engine.evaluate import make_evaluate_fn
from detector.engine.launch import train

ROOT = Path(__file__).resolve().parents[1]
BCCD = ROOT / "configs" / "bccd" / "faster_rcnn_R_18_FPN_bccd.yaml"
DSB2018 = ROOT / "configs" / "dsb2018" / "mask_rcnn_R_18_FPN_dsb2018.yaml"

# A few iterations, no periodic checkpoint or evaluation: only the final ones.
_SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(1, 2)", "SOLVER.WARMUP_ITERS", "1"]
_SHORT += ["SOLVER.IMS_PER_BATCH", "2", "TEST.IMS_PER_BATCH", "2"]
_SHORT += ["SOLVER.CHECKPOINT_PERIOD", "3", "DATALOADER.NUM_WORKERS", "0"]


def test_bccd_config_matches_the_dataset(shared_data: Path) -> None:
    cfg = load_config(BCCD)
    assert not cfg.MODEL.MASK_ON and cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHT == ""
    assert list(cfg.DATASETS.TRAIN) == ["bccd_trainval"]
    assert list(cfg.DATASETS.TEST) == ["bccd_test"]
    train_set = get_dataset("bccd_trainval", cfg)
    test_set = get_dataset("bccd_test", cfg)
    # SOURCE.md: trainval 292 + test 72 = all 364 images, disjoint.
    assert (len(train_set), len(test_set)) == (292, 72)
    assert list(train_set.class_names) == ["__background__", "RBC", "WBC", "Platelets"]
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES == len(train_set.class_names)
    assert cfg.TEST.VOC_USE_07_METRIC
    _check_schedule(cfg)


def test_dsb2018_config_matches_the_dataset(shared_data: Path) -> None:
    cfg = load_config(DSB2018)
    assert cfg.MODEL.MASK_ON and cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.WEIGHT == ""
    train_set = get_dataset(cfg.DATASETS.TRAIN[0], cfg)
    test_set = get_dataset(cfg.DATASETS.TEST[0], cfg)
    assert len(train_set) + len(test_set) == 370  # SOURCE.md: 370 images, 80/20 split
    assert set(train_set.image_ids).isdisjoint(test_set.image_ids)
    assert train_set.has_masks
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CLASSES == len(train_set.class_names) == 2
    # Up to 30 nuclei per image: room for all of them after NMS and in the proposals.
    assert cfg.MODEL.ROI_HEADS.DETECTIONS_PER_IMG >= 100
    assert min(cfg.MODEL.RPN.ANCHOR_SIZES) <= 8
    _check_schedule(cfg)


def _check_schedule(cfg) -> None:
    steps = list(cfg.SOLVER.STEPS)
    assert steps == sorted(steps) and steps[-1] < cfg.SOLVER.MAX_ITER
    assert cfg.SOLVER.WARMUP_ITERS < steps[0]


def _tiny_bccd(shared_data: Path, tmp_path: Path) -> list[str]:
    """A VOC root of 3 training and 2 test BCCD images (links to the real files), as options
    declaring the datasets bccd_tiny_train / bccd_tiny_test."""
    real = shared_data / "bccd" / "BCCD"
    root = tmp_path / "bccd_tiny"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").symlink_to(real / "Annotations")
    (root / "JPEGImages").symlink_to(real / "JPEGImages")
    splits = {"train": _ids(real, "trainval")[:3], "test": _ids(real, "test")[:2]}
    opts = []
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        key = f"DATASETS.CUSTOM.bccd_tiny_{split}"
        opts += [f"{key}.FORMAT", "voc", f"{key}.ROOT", str(root), f"{key}.SPLIT", split]
        opts += [f"{key}.CLASS_NAMES", "[RBC, WBC, Platelets]"]
    return opts + ["DATASETS.TRAIN", "(bccd_tiny_train,)", "DATASETS.TEST", "(bccd_tiny_test,)"]


def _ids(voc_root: Path, split: str) -> list[str]:
    return (voc_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _tiny_dsb2018(shared_data: Path, tmp_path: Path) -> list[str]:
    """A DSB2018 root of 5 real image folders (links): its 80/20 split is 4 train, 1 val."""
    real = shared_data / "dsb2018-nuclei" / "stage1_train"
    root = tmp_path / "dsb_tiny"
    (root / "stage1_train").mkdir(parents=True)
    for folder in sorted(real.iterdir())[:5]:
        (root / "stage1_train" / folder.name).symlink_to(folder)
    opts = []
    for split in ("train", "val"):
        key = f"DATASETS.CUSTOM.dsb_tiny_{split}"
        opts += [f"{key}.FORMAT", "dsb2018", f"{key}.ROOT", str(root), f"{key}.SPLIT", split]
    return opts + ["DATASETS.TRAIN", "(dsb_tiny_train,)", "DATASETS.TEST", "(dsb_tiny_val,)"]


def _train_and_evaluate(config: Path, opts: list[str], out: Path) -> dict[str, float]:
    cfg = merge_opts(load_config(config), [*_SHORT, *opts, "OUTPUT_DIR", str(out)])
    result = train(cfg, evaluate_fn=make_evaluate_fn(cfg))
    assert result.final_checkpoint is not None and Path(result.final_checkpoint).is_file()
    # The final evaluation's record in metrics.jsonl: the one at the last iteration with "bbox/".
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if any(key.startswith("bbox/") for key in r)]
    assert evaluations and evaluations[-1]["iteration"] == cfg.SOLVER.MAX_ITER
    return evaluations[-1]


def _assert_fractions(metrics: dict[str, float], keys: list[str]) -> None:
    for key in keys:
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0, (key, metrics[key])


@pytest.mark.slow
def test_bccd_trains_and_evaluates_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    opts = _tiny_bccd(shared_data, tmp_path)
    metrics = _train_and_evaluate(BCCD, opts, tmp_path / "out")
    classes = ("RBC", "WBC", "Platelets")
    _assert_fractions(metrics, ["bbox/mAP", *(f"bbox/AP-{name}" for name in classes)])


@pytest.mark.slow
def test_dsb2018_trains_and_evaluates_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    opts = _tiny_dsb2018(shared_data, tmp_path)
    metrics = _train_and_evaluate(DSB2018, opts, tmp_path / "out")
    _assert_fractions(metrics, ["bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"])
