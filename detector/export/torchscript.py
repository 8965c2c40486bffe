"""TorchScript export of the inference model, and `load` for exported programs.

`export_torchscript` records `InferenceModel` (see detector.export.onnx) with torch.jit.trace:
the graph calls our compiled ops (torch.ops.detector.*) directly, so running it needs the op
library: `detector.export.load(path)` (or `import detector` before `torch.jit.load`). The traced
graph takes a uint8 (3, h, w) image resized by the test transform, of any height and width, and
returns boxes (N, 4), scores (N,), labels (N,) [, mask probabilities (N, 1, M, M)] for any N,
zero included: sizes read from tensors stay in the graph (detector.structures.as_size).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.export.inference_model import (
    InferenceModel,
    check_against_eager,
    load_for_export,
    other_size,
    prepare_image,
    quiet_tracing,
)

__all__ = ["check_torchscript", "export_torchscript", "load", "trace_torchscript"]

logger = logging.getLogger(__name__)


def trace_torchscript(model: nn.Module, image: Tensor) -> torch.jit.ScriptModule:
    """InferenceModel(model) recorded by torch.jit.trace on `image` (uint8 (3, h, w))."""
    wrapper = InferenceModel(model).eval()
    with torch.no_grad(), quiet_tracing():
        # torch.jit.trace is partly untyped; on a module it returns a ScriptModule
        traced = torch.jit.trace(wrapper, (image,), check_trace=False)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return cast(torch.jit.ScriptModule, traced)


def check_torchscript(
    module: nn.Module, wrapper: InferenceModel, image: Tensor, atol: float = 1e-4
) -> float:
    """Runs the TorchScript module and PyTorch on `image`; asserts the same detections within
    `atol` (see compare_outputs). Returns the largest absolute difference."""
    return check_against_eager(module, wrapper, image, atol, "TorchScript")


def export_torchscript(
    cfg: Config,
    weights: str | Path,
    output: str | Path,
    *,
    sample_image: str | Path | Tensor | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> str:
    """Exports the detector of `cfg` with `weights` as a TorchScript file (torch.jit.save),
    traced on `sample_image` resized by the test transform. With `check`, loads the file back
    and compares it with PyTorch on the sample and on `other_size(sample)`. Returns a line
    describing the check.

    Raises:
        AssertionError: the loaded module's outputs differ from PyTorch's by more than `atol`.
    """
    model, cfg = load_for_export(cfg, weights)
    image = prepare_image(cfg, sample_image)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    trace_torchscript(model, image).save(str(output))
    logger.info("wrote %s (traced on %s)", output, tuple(image.shape))
    described = f"input {image.dtype} (3, height, width), dynamic; detections dynamic"
    if not check:
        return described
    loaded, wrapper, second = load(output), InferenceModel(model).eval(), other_size(image)
    error = max(check_torchscript(loaded, wrapper, x, atol=atol) for x in (image, second))
    return (
        f"{described}; torch.jit.load's module matches PyTorch on the sample image "
        f"{tuple(image.shape)} and on {tuple(second.shape)} (max abs difference {error:.2e}, "
        f"tolerance {atol})"
    )


def load(path: str | Path) -> nn.Module:
    """An exported program, ready to call on a uint8 (3, h, w) image: a torch.export program
    (.pt2, torch.export.load(path).module()) or a TorchScript file (torch.jit.load), after
    loading our op library (torch.ops.detector.*) which both call."""
    import detector.ops._library  # noqa: F401  # pyright: ignore[reportUnusedImport] (registers torch.ops.detector.*)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    # torch.jit.load is untyped; it returns a ScriptModule
    loaded = torch.jit.load(str(path), map_location="cpu")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return cast(torch.jit.ScriptModule, loaded)
