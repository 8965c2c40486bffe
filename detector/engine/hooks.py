"""Trainer hooks: periodic checkpoints, periodic evaluation, metrics files and the progress bar.

A hook sees the trainer after every iteration (`after_step`, with `trainer.iter` iterations
done), once before and after training, and `close` runs even when training fails. The trainer
calls them in list order; evaluation runs before checkpointing so that a checkpoint holds the
RNG state after everything its iteration did, and a resumed run replays the same random streams.
"""

from __future__ import annotations

import datetime
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from detector.utils import comm
from detector.utils.metrics import MetricsWriter, SmoothedValue, flatten_dict

if TYPE_CHECKING:
    from detector.engine.trainer import Trainer

__all__ = [
    "EvalHook",
    "HookBase",
    "MetricsHook",
    "PeriodicCheckpointer",
    "ProgressBar",
]

logger = logging.getLogger(__name__)


class HookBase:
    """Does nothing; subclasses override what they need."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        """Runs only when training reached MAX_ITER."""

    def close(self) -> None:
        """Runs at the end, also after an error."""


class PeriodicCheckpointer(HookBase):
    """Saves model_XXXXXXX.pth every `period` iterations and model_final.pth at the end."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.iter
        if self.period > 0 and it % self.period == 0 and it < trainer.max_iter:
            trainer.checkpointer.save_iteration(it)

    def after_train(self, trainer: Trainer) -> None:
        trainer.checkpointer.save("model_final", iteration=trainer.iter)


class EvalHook(HookBase):
    """Calls `evaluate_fn(model) -> dict` every `period` iterations (0: only at the end) and at
    the end, with the model in eval mode; logs the results and writes them as metrics."""

    def __init__(self, period: int, evaluate_fn: Callable[[Any], dict[str, Any]]) -> None:
        self.period = period
        self.evaluate_fn = evaluate_fn
        self.results: dict[str, Any] = {}

    def _evaluate(self, trainer: Trainer) -> None:
        model = trainer.unwrapped_model
        was_training = model.training
        model.eval()
        try:
            results = self.evaluate_fn(model) or {}
        finally:
            model.train(was_training)
        self.results = results
        flat = flatten_dict(results)
        logger.info(
            "evaluation at iteration %d: %s",
            trainer.iter,
            ", ".join(f"{k}={v:.4f}" for k, v in flat.items()) or "no metric",
        )
        trainer.write_metrics(flat)
        comm.synchronize()

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.iter
        if self.period > 0 and it % self.period == 0 and it < trainer.max_iter:
            self._evaluate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._evaluate(trainer)


class MetricsHook(HookBase):
    """Writes every iteration's metrics (losses, lr, time, data_time, memory) to metrics.jsonl and
    TensorBoard, and logs a summary line with the ETA every `log_period` iterations, at the
    first iterations (EARLY_LOG_ITERS: a slow run shows signs of life at once) and at the end
    (rank 0)."""

    EARLY_LOG_ITERS = (1, 2, 5, 10)

    def __init__(self, writer: MetricsWriter | None, log_period: int = 20) -> None:
        self.writer = writer
        self.log_period = log_period
        self.smoothed: dict[str, SmoothedValue] = {}

    def after_step(self, trainer: Trainer) -> None:
        metrics = trainer.last_metrics
        for key, value in metrics.items():
            self.smoothed.setdefault(key, SmoothedValue(self.log_period)).update(value)
        trainer.write_metrics(metrics)
        it = trainer.iter
        if it % self.log_period == 0 or it == trainer.max_iter or it in self.EARLY_LOG_ITERS:
            self._log_line(trainer)

    def _log_line(self, trainer: Trainer) -> None:
        remaining = trainer.max_iter - trainer.iter
        eta = datetime.timedelta(seconds=int(self.smoothed["time"].median * remaining))
        losses = "  ".join(
            f"{k}: {v.median:.4f}" for k, v in self.smoothed.items() if k.startswith("loss")
        )
        logger.info(
            "eta: %s  iter: %d/%d  %s  lr: %.6g  time: %.4f  data: %.4f  memory: %.0f MB",
            eta,
            trainer.iter,
            trainer.max_iter,
            losses,
            trainer.last_metrics["lr"],
            self.smoothed["time"].median,
            self.smoothed["data_time"].median,
            trainer.last_metrics.get("memory_mb", 0.0),
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _TqdmConsole(logging.Handler):
    """Prints log records above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class ProgressBar(HookBase):
    """A tqdm bar with the ETA and the current total loss (rank 0, attached to a terminal).

    While the bar is shown, console log lines of the 'detector' logger are printed above it.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = comm.is_main_process() and sys.stdout.isatty()
        self.enabled = enabled
        self._bar: Any = None
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    def before_train(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=trainer.max_iter, initial=trainer.start_iter, desc="train", dynamic_ncols=True
        )
        self._swap_console_handlers()

    def _swap_console_handlers(self) -> None:
        root = logging.getLogger("detector")
        for handler in list(root.handlers):
            if _is_console(handler):
                replacement = _TqdmConsole(handler.level)
                replacement.setFormatter(handler.formatter)
                root.removeHandler(handler)
                root.addHandler(replacement)
                self._swapped.append((handler, replacement))

    def after_step(self, trainer: Trainer) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        self._bar.set_postfix(
            loss=f"{trainer.last_metrics['loss']:.4f}", lr=f"{trainer.last_metrics['lr']:.3g}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        root = logging.getLogger("detector")
        for original, replacement in self._swapped:
            root.removeHandler(replacement)
            root.addHandler(original)
        self._swapped = []


def _is_console(handler: logging.Handler) -> bool:
    """Whether `handler` is a plain StreamHandler: the console, not a FileHandler."""
    return type(handler) is logging.StreamHandler
