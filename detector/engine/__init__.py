"""Training engine: the trainer loop, its hooks, checkpoints and the `train(cfg, resume)` entry."""

from detector.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from detector.engine.hooks import EvalHook, HookBase, MetricsHook, PeriodicCheckpointer, ProgressBar
from detector.engine.launch import TrainResult, default_setup, train
from detector.engine.trainer import Trainer, TrainingDivergedError

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "CorruptCheckpointError",
    "EvalHook",
    "HookBase",
    "MetricsHook",
    "PeriodicCheckpointer",
    "ProgressBar",
    "TrainResult",
    "Trainer",
    "TrainingDivergedError",
    "UnsafeCheckpointError",
    "default_setup",
    "load_checkpoint_file",
    "train",
]
