"""tools/test.py: argument errors, and end to end on BCCD (VOC metric) and the COCO sample (COCO
metrics, boxes and masks) with a tiny model trained for a few iterations in the test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.config import load_config
from detector.engine import evaluate
from detector.engine.evaluate import make_evaluate_fn
from detector.engine.launch import train

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "test.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("test_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_detector_logger")


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A tiny R-18-FPN (GroupNorm trunk, trained from scratch), 128 px images.
TINY = """
_BASE_: {root}/configs/Base-RCNN-FPN.yaml
MODEL:
  DEVICE: cpu
  BACKBONE: {{CONV_BODY: R-18-FPN, FREEZE_CONV_BODY_AT: 0}}
  RESNETS: {{NORM: GN, RES2_OUT_CHANNELS: 64, BACKBONE_OUT_CHANNELS: 32}}
  RPN:
    PRE_NMS_TOP_N_TRAIN: 200
    POST_NMS_TOP_N_TRAIN: 100
    FPN_POST_NMS_TOP_N_TRAIN: 100
    PRE_NMS_TOP_N_TEST: 100
    POST_NMS_TOP_N_TEST: 50
    FPN_POST_NMS_TOP_N_TEST: 50
    BATCH_SIZE_PER_IMAGE: 64
  ROI_HEADS: {{BATCH_SIZE_PER_IMAGE: 32, SCORE_THRESH: 0.0, DETECTIONS_PER_IMG: 20}}
  ROI_BOX_HEAD: {{NUM_CLASSES: {num_classes}, MLP_HEAD_DIM: 64}}
INPUT:
  MIN_SIZE_TRAIN: (128,)
  MAX_SIZE_TRAIN: 224
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 224
DATALOADER: {{NUM_WORKERS: 0}}
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.01
  MAX_ITER: 3
  WARMUP_ITERS: 1
  STEPS: (100,)
TEST: {{IMS_PER_BATCH: 2}}
SEED: 1
"""

MASKS = """
MODEL:
  MASK_ON: true
  ROI_MASK_HEAD:
    POOLER_SCALES: (0.25, 0.125, 0.0625, 0.03125)
    FEATURE_EXTRACTOR: MaskRCNNFPNFeatureExtractor
    PREDICTOR: MaskRCNNC4Predictor
    POOLER_RESOLUTION: 14
    POOLER_SAMPLING_RATIO: 2
    RESOLUTION: 28
    SHARE_BOX_FEATURE_EXTRACTOR: false
    CONV_LAYERS: (16, 16)
"""


def _write_config(directory: Path, num_classes: int, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / "tiny_base.yaml"
    base.write_text(TINY.format(root=ROOT, num_classes=num_classes))
    path = directory / "tiny.yaml"
    path.write_text(f"_BASE_: {base}\n{extra}")
    return path


def _small_bccd(shared_data: Path, directory: Path) -> str:
    """A VOC root with BCCD's annotations and images and two small splits (6 train, 4 test)."""
    bccd = shared_data / "bccd" / "BCCD"
    root = directory / "bccd_small"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name in ("Annotations", "JPEGImages"):
        (root / name).symlink_to((bccd / name).resolve())
    for split, count in (("train", 6), ("test", 4)):
        ids = (bccd / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:count]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return (
        "DATASETS:\n"
        "  TRAIN: (small_train,)\n"
        "  TEST: (small_test,)\n"
        "  CUSTOM:\n"
        f"    small_train: {{FORMAT: voc, ROOT: {root}, SPLIT: train,"
        " CLASS_NAMES: [RBC, WBC, Platelets]}\n"
        f"    small_test: {{FORMAT: voc, ROOT: {root}, SPLIT: test,"
        " CLASS_NAMES: [RBC, WBC, Platelets]}\n"
    )


def _train(config: Path, output_dir: Path, evaluate: bool = False) -> Path:
    """Trains the tiny model; with `evaluate`, on DATASETS.TEST at iteration 2 and at the end."""
    cfg = load_config(config, ["OUTPUT_DIR", str(output_dir), "TEST.EVAL_PERIOD", "2"])
    evaluate_fn = make_evaluate_fn(cfg) if evaluate else None
    return train(cfg, evaluate_fn=evaluate_fn).final_checkpoint


def _check_metrics(metrics: dict, keys: list[str]) -> None:
    for key in keys:
        assert key in metrics, f"{key} missing from {sorted(metrics)[:10]}"
    for key, value in metrics.items():
        assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (key, value)
    assert all(metrics[key] is not None and not math.isnan(metrics[key]) for key in keys)


# --------------------------------------------------------------------------------------------
# Fast: arguments and user errors
# --------------------------------------------------------------------------------------------
def test_parse_args(tool):
    args = tool.parse_args(
        ["--config-file", "a.yaml", "--eval-only-saved", "out/inference", "MODEL.WEIGHT", "w.pth"]
    )
    assert args.config_file == "a.yaml" and args.eval_only_saved == "out/inference"
    assert args.opts == ["MODEL.WEIGHT", "w.pth"]


def test_missing_weights_file(tool, tmp_path, capsys):
    config = _write_config(tmp_path, 4, "DATASETS:\n  TEST: (shapes_val,)\n")
    missing = tmp_path / "nope.pth"
    argv = ["--config-file", str(config), "MODEL.WEIGHT", str(missing), "OUTPUT_DIR", str(tmp_path)]
    assert tool.main(argv) == 1
    assert f"weights file not found: {missing}" in capsys.readouterr().err


def test_no_weights_at_all(tool, tmp_path, capsys):
    config = _write_config(tmp_path, 4, "DATASETS:\n  TEST: (shapes_val,)\n")
    assert tool.main(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "o")]) == 1
    assert "MODEL.WEIGHT is empty" in capsys.readouterr().err


def test_weights_of_another_model(tool, tmp_path, capsys):
    config = _write_config(tmp_path, 4, "DATASETS:\n  TEST: (shapes_val,)\n")
    weights = tmp_path / "other.pth"
    torch.save({"model": {"head.weight": torch.zeros(2)}}, weights)
    argv = ["--config-file", str(config), "MODEL.WEIGHT", str(weights), "OUTPUT_DIR", str(tmp_path)]
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "head.weight" in err


def test_train_tool_evaluates_on_the_test_datasets(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools" / "train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    calls = []

    def fake_train(cfg, resume=False, evaluate_fn=None):
        calls.append(evaluate_fn)
        raise ValueError("stop here")

    monkeypatch.setattr(train_tool, "train", fake_train)
    config = _write_config(tmp_path, 4, "DATASETS:\n  TEST: (shapes_val,)\n")
    assert train_tool.main(["--config-file", str(config)]) == 1
    assert train_tool.main(["--config-file", str(config), "--skip-test"]) == 1
    assert train_tool.main(["--config-file", str(config), "DATASETS.TEST", "()"]) == 1
    assert callable(calls[0]) and calls[1] is None and calls[2] is None
    # An unknown test dataset fails before training starts.
    assert train_tool.main(["--config-file", str(config), "DATASETS.TEST", "(shapes_vall,)"]) == 1
    assert len(calls) == 3


def test_empty_test_datasets_and_missing_saved_predictions(tool, tmp_path, capsys):
    config = _write_config(tmp_path, 4)
    argv = ["--config-file", str(config), "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()"]
    assert tool.main(argv) == 1
    assert "DATASETS.TEST is empty" in capsys.readouterr().err
    saved = tmp_path / "nothing"
    saved.mkdir()
    argv = ["--config-file", str(config), "--eval-only-saved", str(saved),
            "DATASETS.TEST", "(shapes_val,)", "OUTPUT_DIR", str(tmp_path)]  # fmt: skip
    assert tool.main(argv) == 1
    assert "no saved predictions coco_*_results.json" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Slow: train a few iterations, test, re-evaluate the saved predictions
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_on_bccd_with_the_voc_metric(tool, tmp_path, shared_data, capsys):
    config = _write_config(tmp_path, 4, _small_bccd(shared_data, tmp_path))
    out = tmp_path / "run"
    weights = _train(config, out, evaluate=True)
    capsys.readouterr()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "bbox/mAP" in line]
    assert [line["iteration"] for line in evaluations] == [2, 3]  # TEST.EVAL_PERIOD, the end
    assert all(0.0 <= line["bbox/mAP"] <= 1.0 for line in evaluations)

    argv = ["--config-file", str(config), "--no-progress", "OUTPUT_DIR", str(out),
            "MODEL.WEIGHT", str(weights)]  # fmt: skip
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert "small_test: bbox/mAP=" in printed
    folder = out / "inference" / "small_test"
    metrics = json.loads((folder / "metrics.json").read_text())
    names = ("RBC", "WBC", "Platelets")
    _check_metrics(metrics, ["bbox/mAP", "bbox/mAP_area"]
                   + [f"bbox/AP-{n}" for n in names])  # fmt: skip
    assert metrics == json.loads((folder / "voc_metrics.json").read_text())
    detections = json.loads((folder / "voc_detections_results.json").read_text())
    assert detections, "SCORE_THRESH 0 keeps detections"
    per_image = {}
    for record in detections:
        per_image[record["image_id"]] = per_image.get(record["image_id"], 0) + 1
        x1, y1, x2, y2 = record["bbox"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 480  # original pixels, clipped
    assert max(per_image.values()) <= 20  # ROI_HEADS.DETECTIONS_PER_IMG

    (folder / "metrics.json").unlink()
    argv_saved = [*argv[:2], "--eval-only-saved", str(out / "inference"), *argv[2:]]
    assert tool.main(argv_saved) == 0
    assert json.loads((folder / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_end_to_end_on_the_coco_sample_with_masks(tmp_path, shared_data, capsys):
    extra = MASKS + "DATASETS:\n  TRAIN: (coco_sample6,)\n  TEST: (coco_sample6,)\n"
    config = _write_config(tmp_path, 81, extra)
    out = tmp_path / "run"
    weights = _train(config, out)

    assert (out / "last_checkpoint").read_text().strip() == weights.name
    cfg = load_config(config, ["OUTPUT_DIR", str(out), "TEST.IMS_PER_BATCH", "3"])
    results = evaluate.test(cfg, progress=False)  # no MODEL.WEIGHT: OUTPUT_DIR's last one
    metrics = results["coco_sample6"]
    folder = out / "inference" / "coco_sample6"
    saved = json.loads((folder / "metrics.json").read_text())
    keys = [f"{task}/{name}" for task in ("bbox", "segm") for name in ("AP", "AP50", "AP75")]
    _check_metrics(saved, keys + ["bbox/AR@100", "segm/AR@100"])
    np.testing.assert_equal({k: (None if math.isnan(v) else v) for k, v in metrics.items()}, saved)
    records = json.loads((folder / "coco_instances_results.json").read_text())
    assert records and all("segmentation" in r for r in records)
    sizes = {
        (im["height"], im["width"])
        for im in json.loads(
            (shared_data / "coco-val2017-sample6" / "annotations.json").read_text()
        )["images"]
    }
    assert {tuple(r["segmentation"]["size"]) for r in records} <= sizes  # original sizes

    again = evaluate.test(cfg, saved_predictions=folder)
    np.testing.assert_equal(again["coco_sample6"], metrics)


def test_eval_only_saved_writes_beside_the_predictions(tool, tmp_path, capsys):
    """Was: the metrics went to the config's OUTPUT_DIR, far from the predictions re-scored."""
    dataset = ["DATASETS.CUSTOM", "{s: {FORMAT: shapes, NUM_IMAGES: 2, SEED: 3}}"]
    cfg = load_config(_write_config(tmp_path, 4), [*dataset, "DATASETS.TEST", "[s]"])
    make_evaluate_fn(cfg)  # the dataset builds
    from detector.evaluation import build_evaluator

    build_evaluator(cfg, "s", tmp_path / "gt")
    truth = json.loads((tmp_path / "gt" / "ground_truth_coco.json").read_text())["annotations"]
    saved = tmp_path / "elsewhere"
    saved.mkdir()
    oracle = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
               "score": 1.0} for a in truth]  # fmt: skip
    (saved / "coco_instances_results.json").write_text(json.dumps(oracle))
    argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--eval-only-saved", str(saved),
            *dataset, "DATASETS.TEST", "[s]", "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    assert tool.main(argv) == 0
    assert f"  outputs: {saved}\n" in capsys.readouterr().out
    assert json.loads((saved / "metrics.json").read_text())["bbox/AP"] == pytest.approx(1.0)
    assert not (tmp_path / "out" / "inference" / "s").exists()  # (its log.txt is there)
