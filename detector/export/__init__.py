"""Shipping trained models: slim checkpoints (`slim`), ONNX (`onnx`, its symbolic functions in
`onnx_symbolics`), torch.export programs (`program`), TorchScript (`torchscript`), all recording
`inference_model.InferenceModel`; and `load` for .pt2 / TorchScript files."""

from detector.export.inference_model import InferenceModel
from detector.export.onnx import (
    FixedShapeError,
    UnsupportedOpError,
    check_dynamic_outputs,
    check_exportable,
    check_onnx,
    export_onnx,
)
from detector.export.program import export_program
from detector.export.slim import (
    SlimCheckpointError,
    class_names_from_config,
    export_slim,
    is_slim,
    make_slim,
    metrics_from_log,
)
from detector.export.torchscript import export_torchscript, load

__all__ = [
    "FixedShapeError",
    "InferenceModel",
    "SlimCheckpointError",
    "UnsupportedOpError",
    "check_dynamic_outputs",
    "check_exportable",
    "check_onnx",
    "class_names_from_config",
    "export_onnx",
    "export_program",
    "export_slim",
    "export_torchscript",
    "is_slim",
    "load",
    "make_slim",
    "metrics_from_log",
]
