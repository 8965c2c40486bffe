"""Evaluation drivers: tools/test.py (`test`), the trainer's EvalHook (`make_evaluate_fn`) and
tools/run_main_job.py all run a model on a dataset through `run_evaluation`, which applies
test-time augmentation (TEST.BBOX_AUG) and calls `detector.evaluation.inference_on_dataset`.

Outputs of dataset <name> go to `inference_dir(cfg, name)`, OUTPUT_DIR/inference/<name>/: the
evaluator's predictions (`coco_instances_results.json`, `voc_detections_results.json`, ...) and
metrics (`<evaluator>_metrics.json`, and `metrics.json`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from detector.config import Config
from detector.data import DetectionDataset, build_test_loader, get_dataset
from detector.data.build import check_num_classes
from detector.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    load_checkpoint_file,
    load_model_weights,
)
from detector.engine.launch import resolve_device
from detector.evaluation import (
    DatasetEvaluator,
    TestBatch,
    build_evaluator,
    check_expected_results,
    format_metrics,
    inference_on_dataset,
    reevaluate_saved,
    write_metrics,
)
from detector.modeling.detector import GeneralizedRCNN
from detector.modeling.test_time_augmentation import maybe_with_tta
from detector.utils import comm

__all__ = [
    "build_dataset_evaluation",
    "inference_dir",
    "load_test_weights",
    "make_evaluate_fn",
    "results_dir",
    "run_evaluation",
    "test",
]

logger = logging.getLogger(__name__)


TestLoader = DataLoader[TestBatch]


def raw_dataset(loader: TestLoader) -> DetectionDataset:
    """The dataset under build_test_loader's loader (a shard of this rank's images)."""
    shard: Any = loader.dataset
    return shard.dataset


def inference_dir(cfg: Config, dataset_name: str = "") -> Path:
    """OUTPUT_DIR/inference/<dataset_name>: where the evaluation of a dataset writes (without a
    name: OUTPUT_DIR/inference, tools/test.py's log folder)."""
    return Path(cfg.OUTPUT_DIR) / "inference" / dataset_name


# --------------------------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------------------------
def build_dataset_evaluation(
    cfg: Config, name: str, out_dir: Path | None, dataset: DetectionDataset | None = None
) -> tuple[TestLoader, DatasetEvaluator]:
    """The test loader of DATASETS.TEST entry `name` and its evaluator, writing to `out_dir`
    on rank 0 (nowhere on the other ranks)."""
    loader: TestLoader = build_test_loader(cfg, name)
    if dataset is None:
        dataset = raw_dataset(loader)
    writes_to = out_dir if comm.is_main_process() else None
    return loader, build_evaluator(cfg, name, writes_to, dataset=dataset)


def run_evaluation(
    cfg: Config,
    model: nn.Module,
    loader: TestLoader,
    evaluator: DatasetEvaluator,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """`inference_on_dataset` of the model (wrapped for test-time augmentation when
    TEST.BBOX_AUG.ENABLED), masks cut at MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD."""
    return inference_on_dataset(
        maybe_with_tta(model, cfg),
        loader,
        evaluator,
        progress=progress,
        mask_threshold=cfg.MODEL.ROI_MASK_HEAD.POSTPROCESS_MASKS_THRESHOLD,
    )


# --------------------------------------------------------------------------------------------
# The trainer's evaluate_fn
# --------------------------------------------------------------------------------------------
def make_evaluate_fn(cfg: Config) -> Callable[[nn.Module], dict[str, float]]:
    """`evaluate_fn(model) -> metrics` on every DATASETS.TEST set, for the trainer's EvalHook
    (every TEST.EVAL_PERIOD iterations and at the end).

    Predictions and metrics go to OUTPUT_DIR/inference/<dataset>/. With one test dataset the
    keys are the evaluator's ("bbox/AP", ...); with several they are prefixed by the dataset name
    ("coco_2017_val/bbox/AP"). Rank 0 returns the metrics, other ranks {}. The datasets are
    read here, so that a wrong name or a missing file fails before training rather than after
    it; the loaders and evaluators are built at the first call (the process group exists then).
    """
    names = list(cfg.DATASETS.TEST)
    datasets = {name: get_dataset(name, cfg, "test") for name in names}
    for name, dataset in datasets.items():
        check_num_classes(cfg, dataset, name, "test")
    built: dict[str, tuple[TestLoader, DatasetEvaluator]] = {}

    def evaluate_fn(model: nn.Module) -> dict[str, float]:
        results: dict[str, float] = {}
        for name in names:
            if name not in built:
                out_dir = inference_dir(cfg, name)
                built[name] = build_dataset_evaluation(cfg, name, out_dir, datasets[name])
            metrics = run_evaluation(cfg, model, *built[name], progress=False)
            prefix = f"{name}/" if len(names) > 1 else ""
            results.update({f"{prefix}{key}": value for key, value in metrics.items()})
        return results

    return evaluate_fn


# --------------------------------------------------------------------------------------------
# tools/test.py
# --------------------------------------------------------------------------------------------
def load_test_weights(model: nn.Module, weights: str | Path) -> None:
    """Loads a checkpoint's "model" entry (or a bare state dict) into `model` strictly (see
    `load_model_weights`); torch.load(weights_only=True)."""
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (MODEL.WEIGHT)")
    data = load_checkpoint_file(path)
    load_model_weights(model, data.get("model", data), strict=True, source=str(path))


def _resolve_weights(cfg: Config, weights: str | Path | None) -> Path:
    path = weights or cfg.MODEL.WEIGHT or None
    if path is None:
        path = Checkpointer(cfg.OUTPUT_DIR, model=nn.Identity()).last_checkpoint()
    if path is None:
        raise CheckpointError(
            f"no weights to test: MODEL.WEIGHT is empty and {cfg.OUTPUT_DIR} has no checkpoint; "
            "pass MODEL.WEIGHT path/to/model_final.pth"
        )
    if not Path(path).is_file():
        raise CheckpointError(f"weights file not found: {path} (MODEL.WEIGHT)")
    return Path(path)


def results_dir(
    cfg: Config, dataset_name: str, saved_predictions: str | Path | None = None
) -> Path:
    """Where `test` writes the metrics of `dataset_name`: OUTPUT_DIR/inference/<dataset>, or,
    when re-scoring saved predictions, the folder that holds them."""
    if saved_predictions is None:
        return inference_dir(cfg, dataset_name)
    where = _saved_location(Path(saved_predictions), dataset_name, len(cfg.DATASETS.TEST))
    return where if where.is_dir() else where.parent


def _saved_location(saved: Path, dataset_name: str, num_datasets: int) -> Path:
    """Where the saved predictions of `dataset_name` are: `saved/<dataset_name>` when that
    folder exists (saved is OUTPUT_DIR/inference), else `saved` itself (one dataset)."""
    if (saved / dataset_name).is_dir():
        return saved / dataset_name
    if num_datasets > 1:
        raise FileNotFoundError(
            f"{saved / dataset_name} not found: with several DATASETS.TEST, --eval-only-saved "
            "must be the inference folder holding one sub-folder per dataset"
        )
    return saved


def test(
    cfg: Config,
    weights: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    saved_predictions: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluates a trained model on every DATASETS.TEST set (tools/test.py).

    Writes OUTPUT_DIR/inference/<dataset>/: the evaluator's predictions
    (`coco_instances_results.json`, `voc_detections_results.json`, ...) and metrics
    (`<evaluator>_metrics.json`, and `metrics.json`), and logs the summary. In a multi-process
    run (torchrun) each rank runs on its share of the images and rank 0 evaluates.

    Args:
        cfg: the loaded config; TEST.IMS_PER_BATCH, INPUT.MIN/MAX_SIZE_TEST,
            MODEL.ROI_HEADS.SCORE_THRESH / DETECTIONS_PER_IMG and MODEL.DEVICE apply.
        weights: the checkpoint; default MODEL.WEIGHT, else OUTPUT_DIR's last checkpoint.
        model: a model to use as it is (no weights loaded); default built from cfg.
        saved_predictions: re-evaluate predictions saved by an earlier run, without running any
            model: OUTPUT_DIR/inference (one sub-folder per dataset), a dataset's folder, or a
            predictions JSON file (one dataset). The metrics are written beside them.
        progress: tqdm bars on rank 0 when attached to a terminal.

    Returns:
        {dataset name: metrics} on rank 0 ({} on other ranks).
    """
    names = list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("DATASETS.TEST is empty: name the datasets to test on")
    comm.init_distributed()
    if saved_predictions is not None:
        return _rescore_saved(cfg, names, Path(saved_predictions))
    if model is None:
        path = _resolve_weights(cfg, weights)  # before the (slow) model build
        model = GeneralizedRCNN.from_config(cfg).to(resolve_device(cfg))
        load_test_weights(model, path)
    results: dict[str, dict[str, float]] = {}
    for name in names:
        out_dir = inference_dir(cfg, name)
        loader, evaluator = build_dataset_evaluation(cfg, name, out_dir)
        logger.info("testing on %s (%d images)", name, len(raw_dataset(loader)))
        metrics = run_evaluation(cfg, model, loader, evaluator, progress=progress)
        if comm.is_main_process():
            results[name] = metrics
            _finish(cfg, name, out_dir, metrics)
    comm.synchronize()
    return results


def _rescore_saved(cfg: Config, names: list[str], saved: Path) -> dict[str, dict[str, float]]:
    """`test` with saved_predictions: scores them again on rank 0 ({} on other ranks)."""
    results: dict[str, dict[str, float]] = {}
    if not comm.is_main_process():
        return results
    for name in names:
        out_dir = results_dir(cfg, name, saved)
        evaluator = build_evaluator(cfg, name, out_dir, dataset=get_dataset(name, cfg, "test"))
        results[name] = reevaluate_saved(evaluator, _saved_location(saved, name, len(names)))
        _finish(cfg, name, out_dir, results[name])
    return results


def _finish(cfg: Config, name: str, out_dir: Path, metrics: dict[str, float]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_metrics(out_dir, metrics)
    logger.info("%s: %s (all metrics: %s)", name, format_metrics(metrics), path)
    if cfg.TEST.EXPECTED_RESULTS:
        check_expected_results(
            metrics, cfg.TEST.EXPECTED_RESULTS, cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL
        )
