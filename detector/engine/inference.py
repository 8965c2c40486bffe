"""Inference over a dataset and evaluation: what tools/test.py and the trainer's EvalHook run.

    model outputs (input-image pixels) --postprocess_to_original--> original-image pixels
        --evaluator.process--> records; all ranks' records gathered on rank 0 --> evaluate()

`test(cfg, weights)` is the whole of tools/test.py: build the model, load the weights, run every
DATASETS.TEST set and write OUTPUT_DIR/inference/<dataset>/ (predictions and metrics JSON).

Shapes: R detections (or proposals) of one image; (h, w) the size of the image the model saw
(after the test transforms); (H, W) the original image size; M the mask head's resolution.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from detector.evaluation.evaluator import DatasetEvaluator
from detector.modeling.roi_heads.keypoint_head.inference import scale_keypoints
from detector.modeling.roi_heads.mask_head.paste import paste_masks_in_image
from detector.structures import Boxes, Instances
from detector.utils import comm

__all__ = [
    "check_expected_results",
    "find_saved_predictions",
    "format_metrics",
    "inference_on_dataset",
    "load_test_weights",
    "postprocess_to_original",
    "reevaluate_saved",
    "results_dir",
    "test",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Per-image post-processing
# --------------------------------------------------------------------------------------------
def postprocess_to_original(
    result: Instances, height: int, width: int, mask_threshold: float = 0.5
) -> Instances:
    """Maps one image's predictions from the input image (`result.image_size`, (h, w)) to the
    original image (height, width).

    Boxes (pred_boxes and/or proposal_boxes) are scaled by (width / w, height / h) and clipped to
    the original image. pred_masks given as (R, 1, M, M) probabilities are pasted into the
    original image at the scaled boxes and cut at `mask_threshold`; masks already pasted at the
    input size, (R, h, w), are resized (nearest) to (H, W). Either way they become (R, H, W) bool.
    pred_keypoints (R, K, 3) have their x and y scaled (not clipped), their scores kept.

    Returns:
        A new Instances of image_size (height, width) with the same fields.
    """
    in_height, in_width = result.image_size
    scale_x, scale_y = width / in_width, height / in_height
    size = (int(height), int(width))
    out = Instances(size)
    if result.has("pred_boxes"):
        out.pred_boxes = result.pred_boxes.scale(scale_x, scale_y).clip(size)
    if result.has("proposal_boxes"):
        out.proposal_boxes = result.proposal_boxes.scale(scale_x, scale_y).clip(size)
    for name in ("scores", "pred_classes", "objectness_logits"):
        if result.has(name):
            setattr(out, name, getattr(result, name))
    if result.has("pred_keypoints"):  # (R, K, 3): x, y scaled, scores kept
        out.pred_keypoints = scale_keypoints(result.pred_keypoints, scale_x, scale_y)
    if result.has("pred_masks"):
        boxes = out.pred_boxes if out.has("pred_boxes") else None
        out.pred_masks = _masks_to_original(result.pred_masks, boxes, size, mask_threshold)
    return out


def _masks_to_original(
    masks: torch.Tensor, boxes: Boxes | None, size: tuple[int, int], threshold: float
) -> torch.Tensor:
    """(R, 1, M, M) probabilities -> pasted (R, H, W) bool; (R, h, w) pasted masks -> (R, H, W)
    bool by nearest resizing."""
    if masks.dim() == 4 and masks.shape[1] == 1:
        if boxes is None:
            raise ValueError("postprocess_to_original: pred_masks (R, 1, M, M) need pred_boxes")
        if len(masks) == 0:
            return torch.zeros((0, *size), dtype=torch.bool, device=masks.device)
        return paste_masks_in_image(masks, boxes, size, threshold=threshold)
    if masks.dim() == 3:
        if masks.is_floating_point():
            masks = masks > threshold
        if tuple(masks.shape[1:]) == size or len(masks) == 0:
            return masks.bool().reshape(len(masks), *size)
        resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest")
        return resized[:, 0] > 0.5  # (R, 1, H, W) -> (R, H, W)
    raise ValueError(
        "postprocess_to_original: pred_masks must be (R, 1, M, M) probabilities or (R, h, w) "
        f"pasted masks, got {tuple(masks.shape)}"
    )


# --------------------------------------------------------------------------------------------
# A pass over a dataset
# --------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _show_bar(enabled: bool) -> bool:
    return enabled and comm.is_main_process() and sys.stderr.isatty()


def _num_batches(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


# Without a progress bar, progress is logged at most this often (seconds).
LOG_PERIOD_S = 30.0


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable,
    evaluator: DatasetEvaluator,
    *,
    progress: bool = True,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """Runs `model` on every batch of `data_loader` and evaluates its predictions.

    Args:
        model: a detector whose eval-mode `forward(images)` returns one Instances per image in
            the input images' pixels; set to eval mode here and restored afterwards.
        data_loader: batches (images, targets, metas) as build_test_loader yields them: images
            already resized by the test transforms, metas with the original "height", "width"
            and the "image_id". In a multi-process run each rank iterates over its own share.
        evaluator: receives every image's predictions in original pixels (reset first).
        progress: a tqdm bar on rank 0 when stderr is a terminal (else progress is logged every
            LOG_PERIOD_S seconds).
        mask_threshold: the probability above which a pasted mask pixel is on.

    Returns:
        evaluator.evaluate() on rank 0, after merging every rank's predictions; {} elsewhere.
    """
    evaluator.reset()
    device = _model_device(model)
    total = _num_batches(data_loader)
    show_bar = _show_bar(progress)
    batches = tqdm(data_loader, total=total, desc="inference", unit="batch") if show_bar else None
    was_training = model.training
    model.eval()
    num_images, model_seconds = 0, 0.0
    start = last_log = time.perf_counter()
    try:
        with torch.no_grad():
            for step, (images, _, metas) in enumerate(batches or data_loader, start=1):
                results, seconds = _predict(model, images, metas, device, mask_threshold)
                evaluator.process([meta["image_id"] for meta in metas], results)
                num_images += len(images)
                model_seconds += seconds
                now = time.perf_counter()
                if not show_bar and now - last_log >= LOG_PERIOD_S:
                    _log_progress(step, total, num_images, now - start, model_seconds)
                    last_log = now
    finally:
        model.train(was_training)
        if batches is not None:
            batches.close()
    _log_timing(num_images, time.perf_counter() - start, model_seconds)
    return _gather_and_evaluate(evaluator)


def _predict(
    model: nn.Module,
    images: list[torch.Tensor],
    metas: list[dict[str, Any]],
    device: torch.device,
    mask_threshold: float,
) -> tuple[list[Instances], float]:
    """One batch's predictions in original pixels, on the CPU, and the model's seconds."""
    images = [image.to(device, non_blocking=True) for image in images]
    _sync(device)
    tic = time.perf_counter()
    outputs = model(images)
    _sync(device)
    seconds = time.perf_counter() - tic
    results = [
        postprocess_to_original(out, meta["height"], meta["width"], mask_threshold).to("cpu")
        for out, meta in zip(outputs, metas, strict=True)
    ]
    return results, seconds


def _log_progress(
    step: int, total: int | None, num_images: int, seconds: float, model_seconds: float
) -> None:
    eta = ""
    if total:
        remaining = seconds / step * (total - step)
        eta = f", ETA {datetime.timedelta(seconds=round(remaining))}"
    logger.info(
        "inference: batch %d/%s, %d images, model %.4f s / image, total %.4f s / image%s",
        step,
        total if total is not None else "?",
        num_images,
        model_seconds / max(num_images, 1),
        seconds / max(num_images, 1),
        eta,
    )


def _log_timing(num_images: int, total_seconds: float, model_seconds: float) -> None:
    world = comm.get_world_size()
    per_image = model_seconds / max(num_images, 1)
    logger.info(
        "inference done on %d images (rank %d of %d) in %s: model %.4f s / image, total "
        "(with data loading and post-processing) %.4f s / image",
        num_images,
        comm.get_rank(),
        world,
        datetime.timedelta(seconds=round(total_seconds)),
        per_image,
        total_seconds / max(num_images, 1),
    )


def _gather_and_evaluate(evaluator: DatasetEvaluator) -> dict[str, float]:
    """Merges every rank's processed predictions into rank 0's evaluator and evaluates there."""
    if comm.get_world_size() > 1:
        states = comm.all_gather(evaluator.state())
        if not comm.is_main_process():
            return {}
        for state in states[1:]:
            evaluator.merge_state(state)
    return evaluator.evaluate()


# --------------------------------------------------------------------------------------------
# tools/test.py
# --------------------------------------------------------------------------------------------
def load_test_weights(model: nn.Module, weights: str | Path) -> None:
    """Loads a checkpoint's "model" entry (or a bare state dict) into `model`, strictly: a key
    missing from the file or a key the model lacks is an error naming them (testing half-loaded
    weights would report meaningless numbers). Loaded with torch.load(weights_only=True)."""
    from detector.engine.checkpoint import CheckpointError, load_checkpoint_file, unwrap_model

    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (MODEL.WEIGHT)")
    data = load_checkpoint_file(path)
    state = data.get("model", data)
    model = unwrap_model(model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, keys in (
            ("missing from the file", missing),
            ("not in the model", unexpected),
            ("with another shape", mismatched),
        ):
            if keys:
                parts.append(f"{len(keys)} keys {title} (e.g. {', '.join(keys[:3])})")
        raise CheckpointError(
            f"weights {path} do not fit the model built from the config: {'; '.join(parts)}. "
            "Use the config the weights were trained with"
        )
    model.load_state_dict(state)
    logger.info("loaded weights %s", path)


def _resolve_weights(cfg: Any, weights: str | Path | None) -> Path:
    from detector.engine.checkpoint import Checkpointer, CheckpointError

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


def _inference_dir(cfg: Any, dataset_name: str) -> Path:
    return Path(cfg.OUTPUT_DIR) / "inference" / dataset_name


def results_dir(cfg: Any, dataset_name: str, saved_predictions: str | Path | None = None) -> Path:
    """Where `test` writes the metrics of `dataset_name`: OUTPUT_DIR/inference/<dataset>, or,
    when re-scoring saved predictions, the folder that holds them."""
    if saved_predictions is None:
        return _inference_dir(cfg, dataset_name)
    where = _saved_location(Path(saved_predictions), dataset_name, len(cfg.DATASETS.TEST))
    return where if where.is_dir() else where.parent


def _write_metrics(directory: Path, metrics: dict[str, float]) -> Path:
    path = directory / "metrics.json"
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2))
    return path


def find_saved_predictions(directory: str | Path, evaluator: DatasetEvaluator) -> list[Path]:
    """The `<evaluator.name>_<kind>_results.json` files that `evaluator` wrote in `directory`."""
    return sorted(Path(directory).glob(f"{evaluator.name}_*_results.json"))


def reevaluate_saved(evaluator: DatasetEvaluator, saved: str | Path) -> dict[str, float]:
    """Scores saved predictions without the model: `saved` is a predictions JSON file or a
    folder holding the evaluator's `*_results.json` files (e.g. OUTPUT_DIR/inference/<dataset>).
    """
    saved = Path(saved)
    files = find_saved_predictions(saved, evaluator) if saved.is_dir() else [saved]
    if not files:
        raise FileNotFoundError(
            f"no saved predictions {evaluator.name}_*_results.json in {saved}; run tools/test.py "
            "without --eval-only-saved first"
        )
    metrics: dict[str, float] = {}
    for path in files:
        metrics.update(evaluator.evaluate_saved(path))
    return metrics


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
    cfg: Any,
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
    from detector.data import build_test_loader, get_dataset
    from detector.engine.launch import resolve_device
    from detector.evaluation.build import build_evaluator
    from detector.modeling.test_time_augmentation import maybe_with_tta

    names = list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("DATASETS.TEST is empty: name the datasets to test on")
    comm.init_distributed()
    results: dict[str, dict[str, float]] = {}
    if saved_predictions is not None:
        for name in names:
            if not comm.is_main_process():
                continue
            out_dir = results_dir(cfg, name, saved_predictions)
            evaluator = build_evaluator(cfg, name, out_dir, dataset=get_dataset(name, cfg, "test"))
            where = _saved_location(Path(saved_predictions), name, len(names))
            results[name] = reevaluate_saved(evaluator, where)
            _finish(cfg, name, out_dir, results[name])
        return results
    if model is None:
        from detector.modeling.detector import GeneralizedRCNN

        path = _resolve_weights(cfg, weights)  # before the (slow) model build
        device = resolve_device(cfg)
        model = GeneralizedRCNN.from_config(cfg).to(device)
        load_test_weights(model, path)
    for name in names:
        out_dir = _inference_dir(cfg, name)
        loader = build_test_loader(cfg, name)
        evaluator = build_evaluator(
            cfg, name, out_dir if comm.is_main_process() else None, dataset=loader.dataset.dataset
        )
        logger.info("testing on %s (%d images)", name, len(loader.dataset))
        metrics = inference_on_dataset(
            maybe_with_tta(model, cfg), loader, evaluator, progress=progress
        )
        if comm.is_main_process():
            results[name] = metrics
            _finish(cfg, name, out_dir, metrics)
    comm.synchronize()
    return results


def _finish(cfg: Any, name: str, out_dir: Path, metrics: dict[str, float]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = _write_metrics(out_dir, metrics)
    logger.info("%s: %s (all metrics: %s)", name, format_metrics(metrics), path)
    if cfg.TEST.EXPECTED_RESULTS:
        check_expected_results(
            metrics, cfg.TEST.EXPECTED_RESULTS, cfg.TEST.EXPECTED_RESULTS_SIGMA_TOL
        )


def check_expected_results(
    metrics: dict[str, float], expected: Sequence[Sequence[Any]], sigma_tol: float
) -> list[str]:
    """Compares metrics with TEST.EXPECTED_RESULTS [[task, metric, value, std], ...] (as
    maskrcnn_benchmark does): a metric passes within sigma_tol * std of the value. Logs each
    check; returns the failures as text (a missing metric is a failure)."""
    failures = []
    for entry in expected:
        if len(entry) != 4:
            raise ValueError(
                f"TEST.EXPECTED_RESULTS entry {list(entry)} must be [task, metric, value, std], "
                "e.g. ['bbox', 'AP', 0.37, 0.01]"
            )
        task, metric, value, std = entry
        key = f"{task}/{metric}"
        actual = metrics.get(key)
        low, high = value - sigma_tol * std, value + sigma_tol * std
        ok = actual is not None and low <= actual <= high
        line = f"{key}: {actual} {'within' if ok else 'NOT within'} [{low:.4f}, {high:.4f}]"
        if ok:
            logger.info("expected result %s", line)
        else:
            logger.error("expected result %s", line)
            failures.append(line)
    return failures


_HEADLINE = ("AP", "AP50", "AP75", "mAP", "AR@100", "AR@1000")


def format_metrics(metrics: dict[str, float]) -> str:
    """The headline metrics (AP, AP50, AP75 per task, VOC mAP, proposal AR) as 'key=value' text;
    every metric when none of them is present."""
    headline = [(k, v) for k, v in metrics.items() if k.split("/")[-1] in _HEADLINE]
    shown = ", ".join(f"{k}={v:.4f}" for k, v in headline or metrics.items())
    return shown or "no metric"
