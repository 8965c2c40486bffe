"""Checkpoints: atomic saves, keep-last-K, a `last_checkpoint` pointer, safe loads, resume fallback.

A checkpoint is a dict saved with `torch.save` and read back with `torch.load(weights_only=True)`:

    {"model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "iteration": int,
     "rng": [per-rank {"torch", "numpy", "python", "cuda"}], ...extra}

Files live in the save directory as ``model_0001000.pth`` (iteration 1000 completed) and
``model_final.pth``; ``last_checkpoint`` holds the newest one's file name. Every file is written
to a temporary file in the same directory, fsynced, then renamed over the target (`os.replace`), so
a crash or a full disk never leaves a half-written checkpoint under a real name.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from detector.utils import comm
from detector.utils.arrays import from_numpy
from detector.utils.guards import is_dict, is_list, is_tuple

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "WeightsReport",
    "get_rng_state",
    "load_checkpoint_file",
    "load_model_weights",
    "remove_stale_temporaries",
    "set_rng_state",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

POINTER = "last_checkpoint"
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or loaded."""


class CorruptCheckpointError(CheckpointError):
    """A truncated or damaged checkpoint file (or one that is not a detector checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding pickled Python objects that weights-only loading refuses."""


class WeightsMismatchError(CheckpointError, ValueError):
    """Weights that do not fit the model (strict loading)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = cast(nn.Module, model.module)  # pyright: ignore[reportUnknownMemberType]
    return model


# --------------------------------------------------------------------------------------------
# Loading weights into a model: the one comparison of state dicts
# --------------------------------------------------------------------------------------------
@dataclass
class WeightsReport:
    """How a state dict fits a model, by key: `missing` model keys absent from the weights,
    `unexpected` weight keys the model lacks, `mismatched` "key (weights shape) vs (model
    shape)" for keys of both with other shapes."""

    source: str
    missing: list[str] = field(default_factory=list[str])
    unexpected: list[str] = field(default_factory=list[str])
    mismatched: list[str] = field(default_factory=list[str])

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line: 'N keys missing from the file (e.g. a, b, c); ...'."""
        parts = [
            f"{len(keys)} keys {title} (e.g. {', '.join(keys[:3])})"
            for title, keys in (
                ("missing from the file", self.missing),
                ("not in the model", self.unexpected),
                ("with another shape", self.mismatched),
            )
            if keys
        ]
        return "; ".join(parts) or "all keys fit"


def compare_weights(own: Mapping[str, Any], state: Mapping[str, Any], source: str) -> WeightsReport:
    """The WeightsReport of `state` against a model's state dict `own`."""
    shared = sorted(set(own) & set(state))
    return WeightsReport(
        source=source,
        missing=sorted(set(own) - set(state)),
        unexpected=sorted(set(state) - set(own)),
        mismatched=[
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in shared
            if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
        ],
    )


def load_model_weights(
    model: nn.Module,
    state: Mapping[str, Any],
    *,
    strict: bool,
    source: str,
    model_name: str = "the model built from the config",
) -> WeightsReport:
    """Loads `state` into `model` (a DDP wrapper is unwrapped) and returns how it fit.

    strict: any missing, unexpected or mismatched key raises WeightsMismatchError naming them
    (testing or predicting with half-loaded weights would give meaningless results). Lenient
    (initialization from MODEL.WEIGHT): keys of another shape are skipped (those parameters keep
    their fresh initialization) and the report is logged as warnings.
    """
    model = unwrap_model(model)
    report = compare_weights(model.state_dict(), state, source)
    if strict and not report.fits:
        raise WeightsMismatchError(
            f"weights {source} do not fit {model_name}: {report.describe()}. Use the config "
            "the weights were trained with"
        )
    skipped = {line.split(" ")[0] for line in report.mismatched}
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    for title, keys in (
        ("skipped keys of another shape", report.mismatched),
        ("keys not in the file", report.missing),
        ("unused keys", report.unexpected),
    ):
        if keys:
            logger.warning("%s: %s: %s", source, title, ", ".join(keys))
    logger.info("loaded weights %s", source)
    return report


# --------------------------------------------------------------------------------------------
# Random number generator states (as tensors and plain Python values: weights-only loadable)
# --------------------------------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """The torch, numpy, python `random` and (if initialized) CUDA generator states."""
    # The legacy tuple form: numpy's global generator is an MT19937.
    legacy = cast("tuple[str, npt.NDArray[np.uint32], int, int, float]", np.random.get_state())
    kind, keys, pos, has_gauss, cached = legacy
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": from_numpy(keys.astype(np.int64)),  # (624,) uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the generators saved by `get_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "the checkpoint has CUDA RNG states for %d GPUs but %d are visible; not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary_path(path: Path) -> Path:
    """Where `atomic_write` writes `path` first: `.NAME.tmp-PID` in the same folder."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Deletes the temporary files (`.NAME.tmp-PID`) that `atomic_write` left in `directory` when
    its process was killed; files of a process that is still alive are kept. Returns the deleted
    files."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    for p in sorted(directory.iterdir()):
        match = _TEMPORARY.match(p.name)
        if match and p.is_file() and not _pid_alive(int(match.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
            logger.info("removed %s, left by a stopped run (pid %s)", p, match.group(1))
    return removed


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Calls `write(file)` on a temporary file next to `path`, fsyncs it and renames it to `path`.

    On any error the temporary file is removed and `path` is untouched; the error propagates.
    """
    tmp = _temporary_path(path)
    try:
        with tmp.open("wb", buffering=0) as f:  # unbuffered: a full disk raises OSError(ENOSPC)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file pickles Python objects beyond tensors and plain containers
            (nothing in it is executed).
        CorruptCheckpointError: the file is truncated, damaged, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if _is_unsafe_payload(str(e)):
            detail = _unsafe_detail(str(e))
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path}: it holds pickled Python objects{detail}, "
                "which could run code when unpickled; detector loads checkpoints with "
                "torch.load(weights_only=True) only. Re-save the file as a dict of tensors and "
                "plain values (e.g. {'model': model.state_dict()}) from a trusted environment"
            ) from None
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {e}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first})"
        ) from None
    if not is_dict(data):
        raise CorruptCheckpointError(
            f"checkpoint {path} holds a {type(data).__name__}, not a dict of state dicts"
        )
    return data


_UNSAFE_MARKERS = (
    "Unsupported global",  # a class or function the weights-only unpickler does not allow
    "unsupported GLOBAL",
    "Can only create new object",
    "Can only build Tensor",
)


def _is_unsafe_payload(message: str) -> bool:
    """Whether torch's weights-only error is about a forbidden object (not about damaged bytes,
    such as 'Unsupported operand', which is how garbage reads)."""
    return "Weights only load failed" in message and any(m in message for m in _UNSAFE_MARKERS)


def _unsafe_detail(message: str) -> str:
    """The object torch's weights-only error names ('GLOBAL pathlib.Path.touch'), if any."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" ({match.group(1)})" if match else ""


_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def _state_bytes(obj: Any) -> int:
    """The bytes of the tensors in a (nested) state dict: a lower bound of the file's size."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if is_dict(obj):
        return sum(_state_bytes(v) for v in obj.values())
    if is_list(obj) or is_tuple(obj):
        return sum(_state_bytes(v) for v in obj)
    return 0


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _no_space(directory: Path, needed: int) -> OSError:
    free = _free_bytes(directory)
    return OSError(
        errno.ENOSPC,
        f"No space left on device ({needed / 2**20:.1f} MB needed, {free / 2**20:.1f} MB free)",
    )


def _check_free_space(directory: Path, needed: int) -> None:
    """Raises OSError(ENOSPC) before writing when the file system cannot hold `needed` bytes."""
    if _free_bytes(directory) < needed:
        raise _no_space(directory, needed)


def _save_state(state: dict[str, Any], f: IO[bytes], needed: int) -> None:
    """torch.save, with the write failure it reports as a RuntimeError ('unexpected pos ...' when
    a buffered write hit a full disk) turned back into an OSError: ENOSPC when the disk is now
    too full for the file, else EIO."""
    try:
        torch.save(state, f)
    except RuntimeError as e:
        if not any(marker in str(e) for marker in _TORCH_WRITE_FAILURES):
            raise
        directory = Path(getattr(f, "name", ".")).parent
        if _free_bytes(directory) < needed:
            raise _no_space(directory, needed) from e
        first = str(e).splitlines()[0]
        raise OSError(errno.EIO, f"write failed ({first})") from e


# --------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------
class Checkpointer:
    """Saves and restores the training state of one run in `save_dir`.

    Args:
        save_dir: the run's OUTPUT_DIR.
        model: the model (a DDP wrapper is unwrapped).
        optimizer, scheduler, scaler: saved and restored when given (anything with
            `state_dict` / `load_state_dict`).
        max_to_keep: keep only this many periodic checkpoints (model_XXXXXXX.pth); 0 keeps all.
            model_final.pth is never deleted.

    `save` and `resume` are collective in a multi-process run: every rank calls them; rank 0 alone
    writes, and every rank restores its own RNG state.
    """

    def __init__(
        self,
        save_dir: str | Path,
        *,
        model: nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        max_to_keep: int = 0,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.max_to_keep = max_to_keep
        self._last_saved: Path | None = None

    # -- saving ---------------------------------------------------------------------------
    def _state(self, extra: dict[str, Any], rng: list[dict[str, Any]]) -> dict[str, Any]:
        state: dict[str, Any] = {"model": unwrap_model(self.model).state_dict()}
        for key in ("optimizer", "scheduler", "scaler"):
            obj = getattr(self, key)
            if obj is not None:
                state[key] = obj.state_dict()
        state["rng"] = rng
        state.update(extra)
        return state

    def save(self, name: str, **extra: Any) -> Path:
        """Writes `save_dir/name.pth` atomically, points `last_checkpoint` to it, prunes old ones.

        `extra` (e.g. iteration=1000) is stored alongside the state dicts; keep it to tensors and
        plain Python values. Raises CheckpointError (on every rank) when the file cannot be
        written, e.g. a full disk; the previous checkpoint and pointer are then left as they were.
        """
        rng = comm.all_gather(get_rng_state())
        path = self.save_dir / f"{name}.pth"
        error = None
        if comm.is_main_process():
            try:
                self._write(path, self._state(extra, rng))
            except CheckpointError as e:
                error = str(e)
        errors = [e for e in comm.all_gather(error) if e is not None]
        if errors:
            raise CheckpointError(errors[0])
        self._last_saved = path
        return path

    def save_iteration(self, iteration: int) -> Path:
        """The periodic checkpoint `model_<iteration>.pth` (with iteration=...), unless this
        Checkpointer saved that very file last (same decision on every rank)."""
        path = self.save_dir / f"model_{iteration:07d}.pth"
        if self._last_saved == path:
            return path
        return self.save(path.stem, iteration=iteration)

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        previous = self.last_checkpoint()
        try:
            needed = _state_bytes(state)
            _check_free_space(self.save_dir, needed)
            atomic_write(path, lambda f: _save_state(state, f, needed))
            atomic_write(self.save_dir / POINTER, lambda f: f.write(path.name.encode()))
        except OSError as e:
            kept = (
                f"the previous checkpoint {previous} is intact" if previous else "no file written"
            )
            reason = e.strerror or str(e)
            hint = (
                f"; free disk space in {self.save_dir} or set OUTPUT_DIR elsewhere, then resume"
                if e.errno in (errno.ENOSPC, errno.EDQUOT)
                else ""
            )
            raise CheckpointError(
                f"could not save checkpoint {path}: {reason} ({kept}){hint}"
            ) from e
        logger.info("saved checkpoint %s", path)
        self._prune()

    def _prune(self) -> None:
        if self.max_to_keep <= 0:
            return
        periodic = sorted(self._periodic_files(), key=lambda p: (p[0], p[1].name))
        for _, old in periodic[: -self.max_to_keep]:
            old.unlink(missing_ok=True)
            logger.info("deleted old checkpoint %s (SOLVER.MAX_CHECKPOINTS_KEPT)", old)

    def _periodic_files(self) -> list[tuple[int, Path]]:
        if not self.save_dir.is_dir():
            return []
        found: list[tuple[int, Path]] = []
        for p in self.save_dir.iterdir():
            match = _PERIODIC.match(p.name)
            if match:
                found.append((int(match.group(1)), p))
        return found

    # -- finding ----------------------------------------------------------------------------
    def last_checkpoint(self) -> Path | None:
        """The file `last_checkpoint` points to (None without a pointer)."""
        pointer = self.save_dir / POINTER
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        return self.save_dir / name if name else None

    def candidates(self) -> list[Path]:
        """Checkpoints to resume from, best first: the pointer's target, model_final.pth, then
        periodic checkpoints from the newest."""
        ordered: list[Path] = []
        last = self.last_checkpoint()
        if last is not None:
            ordered.append(last)
        final = self.save_dir / "model_final.pth"
        if final.is_file():
            ordered.append(final)
        ordered += [p for _, p in sorted(self._periodic_files(), reverse=True)]
        unique: list[Path] = []
        for p in ordered:
            if p not in unique:
                unique.append(p)
        return unique

    def has_checkpoint(self) -> bool:
        return bool(self.candidates())

    # -- loading ----------------------------------------------------------------------------
    def load(self, path: str | Path, *, restore_training_state: bool = True) -> dict[str, Any]:
        """Loads a checkpoint into the model (and, by default, the optimizer, scheduler, scaler and
        RNGs). Returns the remaining entries (e.g. {"iteration": 1000})."""
        path = Path(path)
        data = load_checkpoint_file(path)
        if "model" not in data:
            raise CorruptCheckpointError(
                f"checkpoint {path} has no 'model' entry (keys: {', '.join(map(str, data))})"
            )
        unwrap_model(self.model).load_state_dict(data.pop("model"))
        rng = data.pop("rng", None)
        if restore_training_state:
            for key in ("optimizer", "scheduler", "scaler"):
                obj = getattr(self, key)
                if obj is not None and key in data:
                    obj.load_state_dict(data[key])
                elif obj is not None:
                    logger.warning("checkpoint %s has no %s state; it starts fresh", path, key)
            self._restore_rng(rng, path)
        for key in ("optimizer", "scheduler", "scaler"):
            data.pop(key, None)
        logger.info("loaded checkpoint %s", path)
        return data

    def _restore_rng(self, rng: Any, path: Path) -> None:
        if not rng:
            logger.warning("checkpoint %s has no RNG state; random streams start fresh", path)
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(rng) != world:
            logger.warning(
                "checkpoint %s was saved by %d processes, this run has %d: RNG states of rank %d "
                "restored everywhere, so the random streams differ from an uninterrupted run",
                path,
                len(rng),
                world,
                min(rank, len(rng) - 1),
            )
        set_rng_state(rng[min(rank, len(rng) - 1)])

    def resume(self) -> dict[str, Any] | None:
        """Loads the newest good checkpoint of `save_dir` (the full training state).

        A truncated or corrupt file is skipped with a warning naming it, and the next older one is
        tried. Returns the checkpoint's extra entries, or None when there is no checkpoint.

        Raises:
            UnsafeCheckpointError: a candidate holds pickled objects (never skipped silently).
            CheckpointError: checkpoints exist but none of them loads.
        """
        candidates = self.candidates()
        if not candidates:
            return None
        failures: list[str] = []
        for path in candidates:
            try:
                return self.load(path)
            except (CorruptCheckpointError, FileNotFoundError) as e:
                failures.append(str(e))
                logger.warning("%s; falling back to an older checkpoint", e)
        raise CheckpointError(f"no usable checkpoint in {self.save_dir}: " + "; ".join(failures))

    def load_weights(self, path: str | Path) -> None:
        """Initializes the model from MODEL.WEIGHT: a detector checkpoint (its "model" entry) or a
        bare state dict, loaded non-strictly; keys missing from the file, unused keys and keys
        whose shape differs (e.g. a predictor for another NUM_CLASSES, which keeps its fresh
        initialization) are logged. `path` may also be a URL or a catalog name, downloaded once
        (detector.utils.model_zoo). Converted on the way: a torchvision ImageNet classifier (no
        key in common with the model) and a Caffe2 ImageNet .pkl go to the backbone
        (`load_torchvision_weights`); torchvision and detectron2 detection models are renamed."""
        from detector.utils.model_zoo import WeightsError, resolve_weights

        try:
            file = resolve_weights(path)
        except WeightsError as e:
            raise CheckpointError(f"MODEL.WEIGHT {path}: {e}") from None
        if not file.is_file():
            raise CheckpointError(
                f"MODEL.WEIGHT file not found: {file}; put the file there, or name weights to "
                "download (https://..., catalog://ImageNetPretrained/MSRA/R-50, "
                "torchvision://ResNet50_Weights.IMAGENET1K_V1), or set MODEL.WEIGHT to '' for none"
            )
        model = unwrap_model(self.model)
        state, own = _read_weights(file, model), model.state_dict()
        if own and not set(own) & set(state):
            from detector.modeling.backbone.weights import load_torchvision_weights

            load_torchvision_weights(model, state)
            return
        load_model_weights(model, state, strict=False, source=str(file))


def _read_weights(file: Path, model: nn.Module) -> dict[str, Any]:
    """The state dict in a weights file (a .pkl of arrays, a checkpoint's "model" entry or a bare
    state dict), in our layout where its source is recognised (`to_our_layout`)."""
    from detector.modeling.conversion import load_source_file, to_our_layout

    if file.suffix == ".pkl":
        state: dict[str, Any] = load_source_file(file)
    else:
        data = load_checkpoint_file(file)
        state = data.get("model", data)
    converted, source = to_our_layout(state, model)
    if source is not None:
        logger.info("%s: converted from %s's layout (%d keys)", file, source, len(converted))
    return converted
