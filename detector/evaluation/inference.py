"""A pass of a model over a dataset, evaluated (detectron2 keeps `inference_on_dataset` here).

    model outputs (input-image pixels) --detector_postprocess--> original-image pixels
        --evaluator.process--> records; all ranks' records gathered on rank 0 --> evaluate()

The drivers (tools/test.py, the trainer's EvalHook, tools/run_main_job.py) are in
`detector.engine.evaluate`.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from detector.evaluation.evaluator import DatasetEvaluator
from detector.modeling.postprocessing import detector_postprocess
from detector.structures import Instances
from detector.utils import comm

__all__ = ["LOG_PERIOD_S", "TestBatch", "inference_on_dataset"]

TestBatch = tuple[list[Tensor], list[Any], list[dict[str, Any]]]
"""(images (3, h, w) resized by the test transforms, targets, metas with the original "height",
"width" and the "image_id"), as build_test_loader yields them."""

logger = logging.getLogger(__name__)


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


def _num_batches(loader: Iterable[TestBatch]) -> int | None:
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:  # a DataLoader over an iterable-style dataset
        return None


# Without a progress bar, progress is logged at most this often (seconds).
LOG_PERIOD_S = 30.0


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[TestBatch],
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
        detector_postprocess(out, meta["height"], meta["width"], mask_threshold).to("cpu")
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
