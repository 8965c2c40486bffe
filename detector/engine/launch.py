"""`train(cfg, resume)`: the whole training run behind tools/train.py, callable from Python.

It joins the process group when launched by torchrun, sets up logging to OUTPUT_DIR/log.txt,
seeds the random generators, writes the resolved config to OUTPUT_DIR/config.yaml, builds the model
(GeneralizedRCNN) and the data loader (detector.data.build_train_loader) unless they are given,
then runs the `Trainer`. Tests and notebooks inject a toy model and loader.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.config import ConfigError, load_config, save_config
from detector.engine.checkpoint import remove_stale_temporaries
from detector.engine.hooks import HookBase
from detector.engine.output_dir import OutputDirError, lock_output_dir
from detector.engine.trainer import DataLoaderFactory, Trainer
from detector.utils import comm
from detector.utils.logger import setup_logger
from detector.utils.signals import Interrupted, signals_as_exceptions

__all__ = [
    "Interrupted",
    "TrainResult",
    "claim_output_dir",
    "default_argument_parser",
    "default_setup",
    "load_config_from_args",
    "resolve_device",
    "run_tool",
    "seed_all",
    "signals_as_exceptions",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    final_checkpoint: Path
    metrics: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)


def default_argument_parser(description: str, overrides_example: str) -> argparse.ArgumentParser:
    """The command line shared by tools/train.py and tools/test.py: `--config-file FILE` and the
    trailing `KEY VALUE ...` config overrides (`args.opts`); each tool adds its own flags.

    Args:
        description: the tool's one-line description (its docstring's first line).
        overrides_example: shown in the help after "config overrides, e.g. ".
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help=f"config overrides, e.g. {overrides_example}",
    )
    return parser


def load_config_from_args(args: argparse.Namespace) -> Any | None:
    """`load_config(args.config_file, args.opts)`, or None after printing the ConfigError to
    stderr (the tools then exit with status 2)."""
    try:
        return load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def run_tool(body: Callable[[], int], user_errors: tuple[type[Exception], ...]) -> int:
    """Runs a tool's `body` and returns its exit status, ending the run in order on every path.

    A `user_errors` exception prints one `error: ...` line and gives 1; SIGTERM gives 143 and
    Ctrl-C 130, each with one line. In a distributed run the process group is shut down last
    (after a success with a barrier, so every rank exits 0 together; after a failure without).
    """
    failed = True
    try:
        with signals_as_exceptions():
            status = body()
        failed = status != 0
        return status
    except user_errors as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"error: stopped by {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        comm.shutdown(failed=failed)


def resolve_device(cfg: Any) -> torch.device:
    """MODEL.DEVICE, with the GPU of LOCAL_RANK in a multi-process run.

    Raises ValueError when MODEL.DEVICE asks for CUDA and no GPU is visible.
    """
    name = str(cfg.MODEL.DEVICE)
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"MODEL.DEVICE is {name!r} but no CUDA GPU is visible; "
                "set MODEL.DEVICE cpu to train on the CPU"
            )
        if device.index is None:
            device = torch.device("cuda", comm.get_local_rank())
        torch.cuda.set_device(device)
    return device


def seed_all(seed: int) -> int:
    """Seeds python `random`, numpy and torch (all devices); a negative seed draws one.

    Returns the seed used (log it to reproduce a run).
    """
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        seed = comm.all_gather(seed)[0]  # every rank uses rank 0's draw
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def default_setup(cfg: Any) -> torch.device:
    """Process group, logging, seeds, determinism flags and the saved config; returns the device."""
    comm.init_distributed()
    output_dir = Path(cfg.OUTPUT_DIR)
    rank = comm.get_rank()
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(output_dir, rank=rank)
    device = resolve_device(cfg)
    seed = seed_all(cfg.SEED)
    if cfg.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    logger.info(
        "rank %d of %d, device %s, seed %d, torch %s",
        rank,
        comm.get_world_size(),
        device,
        seed,
        torch.__version__,
    )
    if rank == 0:
        save_config(cfg, output_dir / "config.yaml")
        logger.info("resolved config written to %s", output_dir / "config.yaml")
    return device


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path) -> Iterator[None]:
    """Rank 0 locks `output_dir` for the block (one training run per folder, see
    detector.engine.output_dir); when it cannot, every rank raises the same OutputDirError."""
    comm.init_distributed()
    with contextlib.ExitStack() as stack:
        error = None
        if comm.is_main_process():
            try:
                stack.enter_context(lock_output_dir(output_dir))
            except OutputDirError as e:
                error = str(e)
        errors = [e for e in comm.all_gather(error) if e is not None]
        if errors:
            raise OutputDirError(errors[0])
        yield


def _default_data_loader(cfg: Any) -> DataLoaderFactory:
    def factory(start_iter: int) -> Any:
        from detector.data import build_train_loader  # not needed by injected loaders

        return build_train_loader(cfg, start_iter=start_iter)

    return factory


def train(
    cfg: Any,
    resume: bool = False,
    *,
    model: nn.Module | None = None,
    data_loader: DataLoaderFactory | None = None,
    evaluate_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
    hooks: Sequence[HookBase] = (),
    **trainer_overrides: Any,
) -> TrainResult:
    """Trains a model as configured by `cfg`; with `resume`, continues from OUTPUT_DIR's newest
    good checkpoint (else starts from MODEL.WEIGHT, if set).

    Args:
        cfg: the loaded config (detector.config.load_config).
        resume: restore model, optimizer, schedule, scaler, iteration and RNG states.
        model: defaults to GeneralizedRCNN.from_config(cfg); moved to the device here.
        data_loader: `factory(start_iter)` -> the batches from iteration start_iter on
            (see Trainer); defaults to detector.data.build_train_loader(cfg, start_iter).
        evaluate_fn: `evaluate_fn(model) -> dict` called every TEST.EVAL_PERIOD iterations and at
            the end (none by default); `detector.evaluation.make_evaluate_fn(cfg)` evaluates on
            DATASETS.TEST (what tools/train.py passes).
        hooks: extra trainer hooks.
        trainer_overrides: keyword arguments replacing what Trainer.from_config reads from cfg.

    Returns:
        TrainResult with the output folder, model_final.pth and the last iteration's metrics.
    """
    with claim_output_dir(cfg.OUTPUT_DIR):
        device = default_setup(cfg)
        if comm.is_main_process():
            remove_stale_temporaries(cfg.OUTPUT_DIR)
        if model is None:
            from detector.modeling.detector import GeneralizedRCNN

            model = GeneralizedRCNN.from_config(cfg)
        model.to(device)
        trainer = Trainer.from_config(
            cfg,
            model=model,
            data_loader=data_loader or _default_data_loader(cfg),
            evaluate_fn=evaluate_fn,
            device=device,
            hooks=hooks,
            **trainer_overrides,
        )
        trainer.resume_or_load(resume, weights=cfg.MODEL.WEIGHT)
        metrics = trainer.train()
        final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
        logger.info("final weights: %s; metrics: %s", final, Path(cfg.OUTPUT_DIR) / "metrics.jsonl")
        comm.synchronize()
        return TrainResult(Path(cfg.OUTPUT_DIR), final, metrics, trainer.unwrapped_model)
