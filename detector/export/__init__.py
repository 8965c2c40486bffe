"""Shipping trained models: slim checkpoints, ONNX and torch.export programs."""

from detector.export.slim import (
    SlimCheckpointError,
    class_names_from_config,
    export_slim,
    is_slim,
    make_slim,
)

__all__ = ["SlimCheckpointError", "class_names_from_config", "export_slim", "is_slim", "make_slim"]
