"""The iteration-based training loop.

One iteration is one optimizer step. It draws SOLVER.ACCUMULATE_GRAD_STEPS batches from the data
loader, runs `model(images, targets) -> {loss_name: scalar}` on each under autocast (SOLVER.AMP),
back-propagates the sum of the losses divided by the accumulation count (so the gradient is the
mean over all of the iteration's batches), optionally clips the gradient norm
(SOLVER.CLIP_GRADIENTS), then steps the optimizer and the LR schedule.

The data loader is given as a factory `data_loader(start_iter) -> iterable of batches`, like
`detector.data.build_train_loader(cfg, start_iter)`: it yields the batches of iterations
`start_iter, start_iter + 1, ...` (ACCUMULATE_GRAD_STEPS batches per iteration, so it starts at
batch `start_iter * ACCUMULATE_GRAD_STEPS`) up to at least MAX_ITER. A batch is
`(images, targets, metas)` or `(images, targets)`, images a list of (3, H, W) tensors. A loader
that is deterministic in its start position replays after a resume exactly the batches an
uninterrupted run would see.

In a multi-process run (torchrun) the model is wrapped in DistributedDataParallel; every rank
trains on its own batches and rank 0 alone writes logs, metrics and checkpoints.

SIGINT, SIGTERM and SIGUSR1 (detector.utils.signals.StopRequests) stop training between two
iterations: the current one finishes, a checkpoint of it is written, and `Interrupted` is raised
(tools/train.py exits 128 + the signal's number); a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detector.config import Config
from detector.engine.checkpoint import Checkpointer, CheckpointError, unwrap_model
from detector.engine.hooks import EvalHook, HookBase, MetricsHook, PeriodicCheckpointer, ProgressBar
from detector.engine.output_dir import OutputDirError
from detector.ops.denormals import flush_denormals
from detector.utils import comm
from detector.utils.guards import is_dict, is_list, is_tuple
from detector.utils.metrics import MetricsWriter
from detector.utils.signals import Interrupted, StopRequests

__all__ = ["Trainer", "TrainingDivergedError"]

logger = logging.getLogger(__name__)

DataLoaderFactory = Callable[[int], Iterable[Sequence[Any]]]


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN or infinite."""


def _to_device(obj: Any, device: torch.device) -> Any:
    """Moves a tensor, an object with `.to` (Instances), or a list/tuple of them to `device`."""
    if is_list(obj) or is_tuple(obj):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to"):
        return obj.to(device)
    return obj


def _memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a CUDA device, else the process's peak resident size, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class Trainer:
    """Trains `model` for `max_iter` iterations with checkpoints, evaluation and metrics.

    Args:
        model: returns a dict of scalar losses from `model(images, targets)` in train mode; it must
            already be on `device`.
        optimizer, scheduler: stepped once per iteration.
        data_loader: `data_loader(start_iter)` -> the batches from iteration start_iter on.
        max_iter: the number of iterations (optimizer steps) of the whole run.
        output_dir: where checkpoints, metrics.jsonl and tensorboard/ go.
        device: where batches are moved.
        checkpoint_period: save every this many iterations (0: only model_final).
        max_checkpoints_kept: keep the newest this many periodic checkpoints (0: all).
        eval_period, evaluate_fn: call `evaluate_fn(model) -> dict` every eval_period iterations
            (0: only at the end); no evaluation without `evaluate_fn`.
        amp_enabled, amp_dtype: autocast to "float16" or "bfloat16"; on the CPU always bfloat16.
            float16 on CUDA uses a GradScaler.
        clip_grad_norm: clip the total gradient L2 norm to this (None: no clipping).
        accumulate_steps: batches per iteration.
        log_period: iterations between log lines (metrics.jsonl gets every iteration).
        tensorboard: also write TensorBoard scalars.
        progress_bar: tqdm bar; None: on rank 0 when stdout is a terminal.
        hooks: extra hooks, called after the built-in ones.
        find_unused_parameters: passed to DistributedDataParallel.
        flush_denormals: treat denormal floats as 0 on every CPU thread while training
            (SOLVER.FLUSH_DENORMALS; detector.ops.denormals).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        data_loader: DataLoaderFactory,
        max_iter: int,
        output_dir: str | Path,
        device: str | torch.device = "cpu",
        checkpoint_period: int = 0,
        max_checkpoints_kept: int = 0,
        eval_period: int = 0,
        evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
        amp_enabled: bool = False,
        amp_dtype: str = "float16",
        clip_grad_norm: float | None = None,
        accumulate_steps: int = 1,
        log_period: int = 20,
        tensorboard: bool = True,
        progress_bar: bool | None = None,
        hooks: Sequence[HookBase] = (),
        find_unused_parameters: bool = False,
        flush_denormals: bool = True,
    ) -> None:
        if accumulate_steps < 1:
            raise ValueError(
                "accumulate_steps (SOLVER.ACCUMULATE_GRAD_STEPS) must be >= 1, "
                f"got {accumulate_steps}"
            )
        self.device = torch.device(device)
        self.model = self._wrap_ddp(model, find_unused_parameters)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data_loader = data_loader
        self.max_iter = max_iter
        self.output_dir = Path(output_dir)
        self.clip_grad_norm = clip_grad_norm
        self.accumulate_steps = accumulate_steps
        self.flush_denormals = flush_denormals
        self._setup_amp(amp_enabled, str(amp_dtype))
        self.checkpointer = Checkpointer(
            self.output_dir,
            model=self.unwrapped_model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=self.scaler if self.scaler.is_enabled() else None,
            max_to_keep=max_checkpoints_kept,
        )
        self.metrics_writer = None
        if comm.is_main_process():
            self.metrics_writer = MetricsWriter(self.output_dir, tensorboard=tensorboard)
        self.hooks: list[HookBase] = [MetricsHook(self.metrics_writer, log_period)]
        if evaluate_fn is not None:
            self.hooks.append(EvalHook(eval_period, evaluate_fn))
        self.hooks += [PeriodicCheckpointer(checkpoint_period), ProgressBar(progress_bar), *hooks]
        self.start_iter = 0
        self.iter = 0
        self.last_metrics: dict[str, float] = {}

    # -- set-up -------------------------------------------------------------------------------
    def _wrap_ddp(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        if comm.get_world_size() <= 1 or isinstance(model, DistributedDataParallel):
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers (BN statistics) are synced once at construction, not at every forward
        # (maskrcnn_benchmark's broadcast_buffers=False; `forward_sync_buffers` in torch >= 2.14).
        sync: dict[str, Any] = {"broadcast_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            sync = {"forward_sync_buffers": False}
        return DistributedDataParallel(
            model,
            device_ids=device_ids,
            find_unused_parameters=find_unused_parameters,
            **sync,
        )

    def _setup_amp(self, enabled: bool, dtype: str) -> None:
        self.amp_enabled = enabled
        if dtype not in ("float16", "bfloat16"):
            raise ValueError(f"SOLVER.AMP.DTYPE must be float16 or bfloat16, got {dtype!r}")
        if enabled and self.device.type == "cpu" and dtype == "float16":
            logger.info("AMP on the CPU runs in bfloat16 (SOLVER.AMP.DTYPE float16 is for CUDA)")
            dtype = "bfloat16"
        self.amp_dtype = getattr(torch, dtype)
        use_scaler = enabled and self.device.type == "cuda" and dtype == "float16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    @property
    def unwrapped_model(self) -> nn.Module:
        return unwrap_model(self.model)

    def resume_or_load(self, resume: bool, weights: str = "") -> int:
        """With `resume` and a checkpoint in output_dir: restores the full training state from the
        newest good one. Otherwise initializes the model from `weights` (MODEL.WEIGHT) if given.
        Returns the iteration training starts from."""
        extra = self.checkpointer.resume() if resume else None
        if extra is not None:
            self.start_iter = int(extra.get("iteration", 0))
            logger.info("resuming at iteration %d", self.start_iter)
        else:
            if resume:
                logger.info("no checkpoint in %s; starting from scratch", self.output_dir)
            if weights:
                self.checkpointer.load_weights(weights)
            self.start_iter = 0
        self.iter = self.start_iter
        return self.start_iter

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        """Runs iterations start_iter..max_iter; returns the last iteration's metrics."""
        logger.info("training from iteration %d to %d", self.start_iter, self.max_iter)
        if self.start_iter >= self.max_iter:
            logger.info("already at SOLVER.MAX_ITER: no iteration to run; raise it to go on")
        self.model.train()
        self.iter = self.start_iter
        self._data_iter = iter(self.data_loader(self.start_iter))
        try:
            with StopRequests() as stop, flush_denormals(self.flush_denormals):
                for hook in self.hooks:
                    hook.before_train(self)
                while self.iter < self.max_iter:
                    self.last_metrics = self.run_step()
                    self.iter += 1
                    for hook in self.hooks:
                        hook.after_step(self)
                    if self.iter < self.max_iter:
                        self._stop_if_requested(stop)
                for hook in self.hooks:
                    hook.after_train(self)
                self._stop_if_requested(stop)
        except Exception as error:
            self._save_after_error(error)
            raise
        finally:
            self._close_data_iter()
            for hook in self.hooks:
                hook.close()
        logger.info("training done: outputs in %s", self.output_dir)
        return self.last_metrics

    def _stop_if_requested(self, stop: StopRequests) -> None:
        """After a complete iteration: when a stop signal arrived (on any rank), writes a
        checkpoint of this iteration (unless the periodic one just did) and raises Interrupted.
        After the last one (final evaluation and checkpoint done) it only raises. With several
        processes every rank stops at the same iteration, naming the largest signal number any
        rank received."""
        signum = stop.signum
        if comm.get_world_size() > 1:
            signum = comm.max_over_ranks(signum or 0) or None  # signal numbers are >= 1
        if signum is None:
            return
        if self.iter >= self.max_iter:
            raise Interrupted(signum, f"after the last iteration ({self.iter}); training is done")
        path = self.checkpointer.save_iteration(self.iter)
        raise Interrupted(
            signum,
            f"after iteration {self.iter}: checkpoint {path} written; continue with --resume",
        )

    def _save_after_error(self, error: Exception) -> None:
        """Saves the last completed iteration when an error (a bad image, a bug) ends a run that
        has made progress, so that --resume continues from it. Not after a divergence (those
        weights produced the NaN), nor when writing was what failed (a full disk: the previous
        checkpoint stays the last one), nor in a multi-process run (saving is collective and the
        other ranks may never get here)."""
        if (
            self.iter <= self.start_iter
            or isinstance(error, (TrainingDivergedError, CheckpointError, OutputDirError))
            or comm.get_world_size() > 1
        ):
            return
        try:
            path = self.checkpointer.save_iteration(self.iter)
        except (CheckpointError, OSError) as e:
            logger.error("no checkpoint saved after the error: %s", e)
            return
        logger.error(
            "training stopped by an error at iteration %d; saved %s (--resume continues from it)",
            self.iter,
            path,
        )

    def _close_data_iter(self) -> None:
        """Stops the data iterator now (DataLoader workers and their threads, or a generator's
        `finally`), not whenever the garbage collector or the interpreter's exit gets to it."""
        data_iter, self._data_iter = self._data_iter, iter(())
        shutdown_workers = getattr(data_iter, "_shutdown_workers", None)
        if callable(shutdown_workers):  # torch.utils.data's multi-process iterator
            shutdown_workers()
        close = getattr(data_iter, "close", None)
        if callable(close):  # a generator
            close()

    def run_step(self) -> dict[str, float]:
        """One iteration: forward/backward on `accumulate_steps` batches, clip, optimizer step."""
        start = time.perf_counter()
        data_time = 0.0
        logged: dict[str, float] = {}
        for micro in range(self.accumulate_steps):
            t = time.perf_counter()
            images, targets = self._next_batch()
            data_time += time.perf_counter() - t
            last = micro == self.accumulate_steps - 1
            with self._maybe_no_sync(last):
                loss_dict = self._forward(images, targets)
                reduced = comm.reduce_dict(loss_dict)
                self._check_finite(reduced)
                total = cast(Tensor, sum(loss_dict.values()))  # _forward checked it is not empty
                self.scaler.scale(total / self.accumulate_steps).backward()  # pyright: ignore[reportUnknownMemberType]  (Tensor.backward is not annotated)
            for key, value in reduced.items():
                logged[key] = logged.get(key, 0.0) + value.item() / self.accumulate_steps
        metrics = {"loss": sum(logged.values()), **logged}
        grad_norm = self._clip_gradients()
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        metrics["time"] = time.perf_counter() - start
        metrics["data_time"] = data_time
        metrics["memory_mb"] = _memory_mb(self.device)
        return metrics

    def _next_batch(self) -> tuple[list[Tensor], list[Any]]:
        try:
            batch = next(self._data_iter)
        except StopIteration:
            raise RuntimeError(
                f"the training data loader ran out of batches at iteration {self.iter}; "
                f"it must yield {self.accumulate_steps} batch(es) per iteration up to "
                f"MAX_ITER = {self.max_iter}"
            ) from None
        if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
            raise TypeError(
                "a training batch must be (images, targets, metas) or (images, targets), "
                f"got {type(batch).__name__}"
            )
        return _to_device(batch[0], self.device), _to_device(batch[1], self.device)

    def _maybe_no_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip DDP's gradient all-reduce on all but the last accumulated batch."""
        if isinstance(self.model, DistributedDataParallel) and not last_micro_step:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _forward(self, images: list[Tensor], targets: list[Any]) -> dict[str, Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(images, targets)
        if not is_dict(loss_dict) or not loss_dict:
            raise TypeError(
                "in training mode the model must return a non-empty dict of losses, got "
                f"{type(loss_dict).__name__}"
            )
        for name, value in loss_dict.items():
            if not isinstance(value, Tensor) or value.numel() != 1:
                raise TypeError(f"loss {name!r} must be a scalar tensor, got {value!r}")
        return {name: value.float() for name, value in loss_dict.items()}

    def _check_finite(self, losses: dict[str, Tensor]) -> None:
        """Stops the run on a NaN/infinite loss (values reduced over ranks: all ranks stop)."""
        bad = {k: v.item() for k, v in losses.items() if not math.isfinite(v.item())}
        if bad:
            terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise TrainingDivergedError(
                f"loss became NaN or infinite at iteration {self.iter + 1}: {terms}. Lower "
                "SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS, enable SOLVER.CLIP_GRADIENTS, or "
                "resume from the last checkpoint (--resume)"
            )

    def _clip_gradients(self) -> float | None:
        if self.clip_grad_norm is None:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.unwrapped_model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        return float(norm)

    def write_metrics(self, scalars: dict[str, float]) -> None:
        """Writes scalars (losses, evaluation results) at the current iteration (rank 0).

        Raises OutputDirError when they cannot be written (e.g. a full disk)."""
        if self.metrics_writer is None or not scalars:
            return
        try:
            self.metrics_writer.write(self.iter, scalars)
        except OSError as e:
            raise OutputDirError(
                f"cannot write the metrics of iteration {self.iter} to {self.output_dir}: "
                f"{e.strerror or e}; free disk space (or fix the folder), then --resume"
            ) from None

    # -- from the config ----------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        model: nn.Module,
        data_loader: DataLoaderFactory,
        evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Builds the optimizer and LR schedule (detector.solver) and reads SOLVER.MAX_ITER,
        CHECKPOINT_PERIOD, MAX_CHECKPOINTS_KEPT, LOG_PERIOD, AMP, CLIP_GRADIENTS,
        ACCUMULATE_GRAD_STEPS, FLUSH_DENORMALS, TEST.EVAL_PERIOD and OUTPUT_DIR. `model` must
        already be on `device`; keyword `overrides` replace any constructor argument."""
        from detector.solver import build_lr_scheduler, build_optimizer

        s = cfg.SOLVER
        optimizer = build_optimizer(cfg, model)
        kwargs: dict[str, Any] = dict(
            model=model,
            optimizer=optimizer,
            scheduler=build_lr_scheduler(cfg, optimizer),
            data_loader=data_loader,
            max_iter=s.MAX_ITER,
            output_dir=cfg.OUTPUT_DIR,
            device=device if device is not None else next(model.parameters()).device,
            checkpoint_period=s.CHECKPOINT_PERIOD,
            max_checkpoints_kept=s.MAX_CHECKPOINTS_KEPT,
            eval_period=cfg.TEST.EVAL_PERIOD,
            evaluate_fn=evaluate_fn,
            amp_enabled=s.AMP.ENABLED,
            amp_dtype=str(s.AMP.DTYPE),
            clip_grad_norm=s.CLIP_GRADIENTS.MAX_NORM if s.CLIP_GRADIENTS.ENABLED else None,
            accumulate_steps=s.ACCUMULATE_GRAD_STEPS,
            log_period=s.LOG_PERIOD,
            flush_denormals=s.FLUSH_DENORMALS,
        )
        kwargs.update(overrides)
        return cls(**kwargs)


def iterate_forever(batches: Iterable[Any]) -> Iterator[Any]:
    """Cycles through a finite iterable (handy for toy loaders in tests and notebooks)."""
    while True:
        yield from batches
