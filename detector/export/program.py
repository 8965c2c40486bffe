"""torch.export (`export_program`, tools/export.py --format torch-export): the same inference model
as a program saved with torch.export.save (`torch.export.load(path).module()(image)`), with the
same inputs and outputs as the ONNX graph. The inference code has no data-dependent Python:
detection counts after score thresholds, NMS and top-k are unbacked symbolic sizes (our NMS ops
declare them), never read back with `int()` / `len()` / `.item()`, so the program is correct for
any number of detections, zero included. The image's height and width are dynamic: any h, w in
`input_side_range(cfg)`, from the largest anchor stride + 1 (65 with FPN's P6 at stride 64;
a smaller side makes a feature map 1 cell wide, a size torch.export specializes) to
INPUT.MAX_SIZE_TEST; the program refuses other sizes (a guard error naming the bound). Images
whose resized shorter side falls under the bound (very elongated ones) need `dynamic=False`
(a program for the sample's size only) or padding. Exported and checked: the tiny test models,
random-weight Faster / Mask R-CNN R-50-FPN (configs/torchvision) and the shapes R-18-FPN Mask
R-CNN, and the tiny model with modulated DCN and ROIPool; the loaded program matched PyTorch
exactly (difference 0) on every image tried. R-FCN and the deformable RoI poolers have fake
kernels for all their ops but were not checked. The program, like the ONNX graph, returns
M x M mask probabilities (map them with detector.modeling.postprocessing.detector_postprocess).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detector.config import Config
from detector.export.inference_model import (
    InferenceModel,
    check_against_eager,
    load_for_export,
    prepare_image,
)

__all__ = [
    "check_program",
    "export_program",
    "input_side_range",
    "program_module",
    "trace_program",
]

logger = logging.getLogger(__name__)


def input_side_range(cfg: Config) -> tuple[int, int | None]:
    """(smallest, largest) height and width the dynamic program accepts.

    Smallest: the largest anchor stride (MODEL.RPN.ANCHOR_STRIDE, the coarsest feature map, P6
    of FPN) + 1, so that every feature map has at least 2 rows and columns (torch.export
    specializes a size of 1, so a range reaching it would not export). Largest:
    INPUT.MAX_SIZE_TEST, the test transform's bound (None, unbounded, when it is <= 0).
    """
    smallest = max(int(s) for s in cfg.MODEL.RPN.ANCHOR_STRIDE) + 1
    largest = cfg.INPUT.MAX_SIZE_TEST
    return smallest, (max(largest, smallest) if largest > 0 else None)


def _dynamic_shapes(cfg: Config) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic_shapes of InferenceModel.forward: h and w in input_side_range."""
    from torch.export import Dim

    smallest, largest = input_side_range(cfg)
    bounds = {"min": smallest} if largest is None else {"min": smallest, "max": largest}
    return {"image": {1: Dim("height", **bounds), 2: Dim("width", **bounds)}}


def _traceable_sample(image: Tensor, smallest: int) -> Tensor:
    """The sample image, zero-padded (bottom, right) to at least `smallest` pixels a side: the
    program is traced with fake tensors, so only the sample's size matters, and a side under
    the dynamic range would be specialized."""
    pad_h = max(smallest - int(image.shape[-2]), 0)
    pad_w = max(smallest - int(image.shape[-1]), 0)
    return nn.functional.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image


def program_module(model: nn.Module) -> InferenceModel:
    """What the program records: InferenceModel in the model's MODEL.PRECISION (bfloat16 as
    autocast regions, which torch.export keeps and lowers to bfloat16 ATen ops; `auto` as
    resolved on this CPU)."""
    return InferenceModel(model, precision=str(getattr(model, "precision", "float32"))).eval()


def trace_program(
    cfg: Config, model: nn.Module, image: Tensor, *, dynamic: bool = True
) -> torch.export.ExportedProgram:
    """torch.export program of `program_module(model)`, traced on `image` (uint8 (3, h, w)).

    With `dynamic`, h and w are dynamic dimensions within `input_side_range(cfg)`; otherwise
    the program takes images of `image`'s size only.
    """
    wrapper = program_module(model)
    dynamic_shapes = None
    if dynamic:
        image = _traceable_sample(image, input_side_range(cfg)[0])
        dynamic_shapes = _dynamic_shapes(cfg)
    with torch.no_grad():
        return torch.export.export(wrapper, (image,), dynamic_shapes=dynamic_shapes, strict=False)


def check_program(
    program: torch.export.ExportedProgram, wrapper: InferenceModel, image: Tensor,
    atol: float = 1e-4,
) -> float:  # fmt: skip
    """Runs the program and PyTorch on `image`; asserts the same number of detections, equal
    labels, and boxes / scores (/ mask probabilities) within `atol`. Returns the largest
    absolute difference."""
    return check_against_eager(program.module(), wrapper, image, atol, "torch.export program")


def export_program(
    cfg: Config,
    weights: str | Path,
    output: str | Path,
    *,
    sample_image: str | Path | Tensor | None = None,
    dynamic: bool = True,
    check: bool = True,
    atol: float = 1e-4,
) -> str:
    """Exports the detector of `cfg` with `weights` as a torch.export program, saved with
    torch.export.save (load it with torch.export.load(path).module()). With `check`, loads the
    file back, runs it on the sample image (resized by the test transform) and compares it with
    PyTorch. Returns a line describing the input and the check.

    With `dynamic` (default) the program takes any uint8 (3, h, w) image with h and w in
    `input_side_range(cfg)`; without it, images of the sample's size only.

    Raises:
        NotImplementedError: torch.export failed (its first complaint and source line).
        AssertionError: the loaded program's outputs differ from PyTorch's by more than `atol`.
    """
    model, cfg = load_for_export(cfg, weights)
    image = prepare_image(cfg, sample_image)
    try:
        program = trace_program(cfg, model, image, dynamic=dynamic)
    except Exception as e:  # torch.export raises many kinds of errors
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        where = re.search(r"Caused by: \((.+?)\)", text)
        at = f" at {where.group(1)}" if where else ""
        raise NotImplementedError(
            f"torch.export cannot export this model: {type(e).__name__}{at}: {first}"
        ) from e
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(output))
    logger.info("wrote %s", output)
    if dynamic:
        smallest, largest = input_side_range(cfg)
        sizes = f"h, w in [{smallest}, {largest if largest is not None else 'any'}]"
    else:
        sizes = f"(h, w) = {tuple(image.shape[-2:])} only"
    reference = program_module(model)
    described = f"input uint8 (3, h, w), {sizes}, MODEL.PRECISION {reference.precision}"
    if not check:
        return described
    loaded = torch.export.load(str(output))
    error = check_program(loaded, reference, image, atol=atol)
    return (
        f"{described}; the loaded program matches PyTorch on the sample image "
        f"{tuple(image.shape)} (max abs difference {error:.2e}, tolerance {atol})"
    )
