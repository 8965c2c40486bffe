"""`train(cfg, resume)`: the whole training run behind tools/train.py, callable from Python.

It joins the process group when launched by torchrun, sets up logging to OUTPUT_DIR/log.txt,
seeds the random generators, writes the resolved config to OUTPUT_DIR/config.yaml, builds the model
(GeneralizedRCNN) and the data loader (detector.data.build_train_loader) unless they are given,
then runs the `Trainer`. Tests and notebooks inject a toy model and loader.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import sys
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.config import Config, ConfigError, dump_config, load_config
from detector.data.errors import DatasetError
from detector.engine.checkpoint import CheckpointError, remove_stale_temporaries
from detector.engine.hooks import HookBase
from detector.engine.output_dir import OutputDirError, lock_output_dir, write_text_file
from detector.engine.trainer import DataLoaderFactory, Trainer, TrainingDivergedError
from detector.modeling.registry import UnknownNameError
from detector.utils import comm
from detector.utils.logger import setup_logger
from detector.utils.precision import describe
from detector.utils.signals import Interrupted, signals_as_exceptions

__all__ = [
    "USER_ERRORS",
    "check_device",
    "Interrupted",
    "ToolArgumentParser",
    "TrainResult",
    "claim_output_dir",
    "debug_requested",
    "default_argument_parser",
    "default_setup",
    "load_config_from_args",
    "resolve_device",
    "run_tool",
    "run_tool_main",
    "seed_all",
    "signals_as_exceptions",
    "split_overrides",
    "train",
    "warn_frozen_norm_without_weights",
]

logger = logging.getLogger(__name__)

# What the tools report as one `error:` line: a bad config (ConfigError), dataset (DatasetError),
# checkpoint (CheckpointError) or registry name (UnknownNameError), a missing file, a bad value
# (ValueError) and an export the model does not support (NotImplementedError).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DatasetError,
    CheckpointError,
    OutputDirError,
    TrainingDivergedError,
    UnknownNameError,
    FileNotFoundError,
    ValueError,
    NotImplementedError,
)


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    final_checkpoint: Path
    metrics: dict[str, float] = field(default_factory=dict[str, float])
    model: nn.Module | None = field(default=None, repr=False)


DEBUG_ENV = "DETECTOR_DEBUG"
# The top-level config keys: a command-line word starting with one of them (OUTPUT_DIR,
# MODEL.WEIGHT, SOLVER.BASE_LR, ...) begins a `KEY VALUE` override wherever it stands.
_TOP_LEVEL_KEYS = frozenset(f.name for f in dataclasses.fields(Config))


def _is_config_key(word: str) -> bool:
    head = word.split(".", 1)[0].split("[", 1)[0]
    return head in _TOP_LEVEL_KEYS and word == word.upper()


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates the `KEY VALUE` config overrides from the rest of a command line:
    `["--input", "a.jpg", "MODEL.WEIGHT", "m.pth"]` -> `(["MODEL.WEIGHT", "m.pth"],
    ["--input", "a.jpg"])`. A key is a word whose first part is a top-level config key; the word
    after it is its value, whatever it looks like (`SEED -1`, `MODEL.WEIGHT ''`)."""
    opts: list[str] = []
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if _is_config_key(word):
            opts += [word, *itertools.islice(words, 1)]
        else:
            rest.append(word)
    return opts, rest


class ToolArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose `KEY VALUE` config overrides may stand anywhere on the command
    line, before, between or after the options (collected in `args.opts`)."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        opts, rest = split_overrides(sys.argv[1:] if args is None else list(args))
        parsed, extra = self.parse_known_args(
            rest, argparse.Namespace() if namespace is None else namespace
        )
        unknown = [word for word in extra if word.startswith("-")]
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        # Leftover words are misspelled keys: load_config names them and the closest key.
        parsed.opts = [*opts, *getattr(parsed, "opts", []), *extra]
        return parsed


def default_argument_parser(
    description: str, overrides_example: str, *, config_required: bool = True, epilog: str = ""
) -> ToolArgumentParser:
    """The command line shared by every tool: `--config-file FILE`, `KEY VALUE ...` config
    overrides anywhere (`args.opts`), `--num-threads N` and `--debug`; each tool adds its own
    flags. Run the parsed arguments with `run_tool_main`.

    Args:
        description: the tool's one-line description (its docstring's first line).
        overrides_example: shown in the help after "config overrides, e.g. ".
        config_required: False for tools whose config may come from elsewhere (a slim
            checkpoint, a built-in default).
        epilog: text shown after the options in the help.
    """
    parser = ToolArgumentParser(
        description=description,
        epilog=epilog or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file", required=config_required, default=None, metavar="FILE", help="YAML config"
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch CPU threads (0: torch's default; 1 is faster on a machine shared by jobs)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (also: the environment variable {DEBUG_ENV}=1)",
    )
    parser.add_argument(
        "opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help=f"config overrides, anywhere on the line, e.g. {overrides_example}",
    )
    return parser


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """`--debug`, or the environment variable DETECTOR_DEBUG set to anything but "" or "0"."""
    flag = bool(args is not None and getattr(args, "debug", False))
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_tool_main(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> int:
    """A tool's `main`: parses `argv`, applies the common flags (`--num-threads`), then runs
    `body(args)` through `run_tool` (one `error:` line per user error, `--debug` tracebacks)."""
    args = parser.parse_args(argv)
    if getattr(args, "num_threads", 0) > 0:
        torch.set_num_threads(args.num_threads)
    return run_tool(lambda: body(args), user_errors, debug=debug_requested(args))


def load_config_from_args(args: argparse.Namespace) -> Any:
    """`load_config(args.config_file, args.opts)`; a ConfigError reaches `run_tool`, which
    prints it and exits with status 2."""
    return load_config(args.config_file, args.opts)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's without the quotes str() adds)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run_tool(
    body: Callable[[], int],
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
    *,
    debug: bool = False,
) -> int:
    """Runs a tool's `body` and returns its exit status, ending the run in order on every path.

    A `user_errors` exception prints one `error: ...` line (after its traceback with `debug`)
    and gives 2 for a ConfigError, else 1; SIGTERM gives 143 and Ctrl-C 130, each with one line.
    Other exceptions (bugs) propagate with their traceback. In a distributed run the process
    group is shut down last (after a success with a barrier, so every rank exits 0 together;
    after a failure without).
    """
    failed = True
    try:
        with signals_as_exceptions():
            status = body()
        failed = status != 0
        return status
    except user_errors as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except Interrupted as e:
        print(f"error: stopped by {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        comm.shutdown(failed=failed)


def resolve_device(cfg: Config) -> torch.device:
    """MODEL.DEVICE, with the GPU of LOCAL_RANK in a multi-process run.

    Raises ValueError when MODEL.DEVICE asks for CUDA and no GPU is visible.
    """
    device = check_device(str(cfg.MODEL.DEVICE), "MODEL.DEVICE")
    if device.type == "cuda":
        if device.index is None:  # pyright: ignore[reportUnnecessaryComparison]  (None for "cuda")
            device = torch.device("cuda", comm.get_local_rank())
        torch.cuda.set_device(device)
    return device


def check_device(name: str, setting: str) -> torch.device:
    """`torch.device(name)`; a ValueError naming `setting` (the config key or flag that gave
    it) when it asks for CUDA and no GPU is visible."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{setting} is {name!r} but no CUDA GPU is visible; use {setting} cpu to run on the CPU"
        )
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
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType]  (untyped parameter)
    return seed


def default_setup(cfg: Config) -> torch.device:
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
    logger.info(
        "model computes in %s", describe(cfg.MODEL.PRECISION, cfg.MODEL.MEMORY_FORMAT, device)
    )
    if rank == 0:
        write_text_file(output_dir / "config.yaml", dump_config(cfg))
        logger.info("resolved config written to %s", output_dir / "config.yaml")
    return device


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path) -> Generator[None]:
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


def warn_frozen_norm_without_weights(model: nn.Module) -> bool:
    """Warns (and returns True) when a model that starts from random weights has frozen batch
    norm layers: their statistics never adapt, so the losses start high and usually diverge."""
    from detector.layers.batch_norm import FrozenBatchNorm2d

    frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    if frozen:
        logger.warning(
            "MODEL.WEIGHT is empty, so %d FrozenBatchNorm2d layers keep random statistics: "
            "training usually diverges. Give MODEL.WEIGHT (e.g. converted ImageNet weights), or "
            "train from scratch with MODEL.RESNETS.NORM GN, MODEL.FPN.USE_GN true and "
            "MODEL.BACKBONE.FREEZE_CONV_BODY_AT 0 (as configs/shapes/*.yaml do)",
            frozen,
        )
    return bool(frozen)


def _default_data_loader(cfg: Config) -> DataLoaderFactory:
    def factory(start_iter: int) -> Any:
        from detector.data import build_train_loader  # not needed by injected loaders

        return build_train_loader(cfg, start_iter=start_iter)

    return factory


def train(
    cfg: Config,
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
            the end (none by default); `detector.engine.evaluate.make_evaluate_fn(cfg)`
            evaluates on DATASETS.TEST (what tools/train.py passes).
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
        if trainer.resume_or_load(resume, weights=cfg.MODEL.WEIGHT) == 0 and not cfg.MODEL.WEIGHT:
            warn_frozen_norm_without_weights(model)
        metrics = trainer.train()
        final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
        logger.info("final weights: %s; metrics: %s", final, Path(cfg.OUTPUT_DIR) / "metrics.jsonl")
        comm.synchronize()
        return TrainResult(Path(cfg.OUTPUT_DIR), final, metrics, trainer.unwrapped_model)
