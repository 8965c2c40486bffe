"""Argument handling shared by the op wrappers: RoI formats, output sizes and device checks.

RoIs are accepted exactly as torchvision.ops accepts them: a Tensor[K, 5] of
(batch_index, x1, y1, x2, y2) or a list of Tensor[K_i, 4] boxes, one per image.

Every function here is TorchScript-compatible, so the op wrappers that call them script with
`torch.jit.script` and keep their checks there. Branches on Python types that cannot occur in
TorchScript (a non-Tensor where a Tensor is annotated) are compiled away by TorchScript and give
the eager error messages in Python.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import torch
from torch import Tensor

# _library registers torch.ops.detector.*
from detector.ops import _library  # noqa: F401  # pyright: ignore[reportUnusedImport]

if TYPE_CHECKING:
    _T = TypeVar("_T")
    #: What TorchScript's `BroadcastingList2[T]` accepts: one T for both, or a pair of them.
    BroadcastingList2: TypeAlias = _T | tuple[_T, _T] | list[_T]
else:
    # TorchScript reads `BroadcastingList2[int]` annotations by this name (also when imported
    # from here).
    from torch.jit.annotations import BroadcastingList2


def sizes_str(sizes: list[int]) -> str:
    """Sizes written as a Python tuple, e.g. "(2, 3)" (also under TorchScript)."""
    texts = [str(s) for s in sizes]
    return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"


def shape_str(t: Tensor) -> str:
    """A tensor's shape written as a Python tuple, e.g. "(2, 3)" (also under TorchScript)."""
    return sizes_str(list(t.shape))


def pair(op: str, value: BroadcastingList2[int], name: str = "output_size") -> tuple[int, int]:
    """Turns an int or a 2-sequence into (height, width), with an error naming `op` and `name`."""
    if isinstance(value, int):
        return value, value
    if not isinstance(value, (tuple, list)) or len(value) != 2:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"{op}: `{name}` must be an int or a pair of ints, got {value}")
    return int(value[0]), int(value[1])


def positive_pair(
    op: str, value: BroadcastingList2[int], name: str = "output_size"
) -> tuple[int, int]:
    """`pair`, then checks that both sizes are > 0."""
    height, width = pair(op, value, name)
    if height <= 0 or width <= 0:
        raise ValueError(f"{op}: `{name}` must be positive, got {value}")
    return height, width


def _check_box_list(op: str, boxes: list[Tensor]) -> None:
    """Checks a list of per-image boxes: non-empty, each a Tensor[K_i, 4]."""
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"{op}: `boxes[{i}]` must be a Tensor[K, 4], got {type(b).__name__}")
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError(f"{op}: `boxes[{i}]` must be a Tensor[K, 4], got {shape_str(b)}")
    if len(boxes) == 0:
        raise ValueError(f"{op}: `boxes` is an empty list; pass one Tensor[K, 4] per image")


def _boxes_list_to_rois(boxes: list[Tensor]) -> Tensor:
    """N Tensor[K_i, 4] -> Tensor[sum K_i, 5] with the image index in column 0."""
    concat = torch.cat(boxes, dim=0)
    # (K_i,) per image -> (K, 1) batch indices
    indices = [
        torch.full((b.size(0), 1), float(i), dtype=concat.dtype, device=concat.device)
        for i, b in enumerate(boxes)
    ]
    return torch.cat([torch.cat(indices, dim=0), concat], dim=1)


def convert_boxes_to_roi_format(op: str, boxes: Tensor | list[Tensor]) -> Tensor:
    """Returns RoIs as Tensor[K, 5] (batch_index, x1, y1, x2, y2), checking the shapes.

    Args:
        op: name of the calling op, used in error messages.
        boxes: Tensor[K, 5], or a list/tuple of Tensor[K_i, 4] (one per image).
    """
    if isinstance(boxes, (list, tuple)):
        box_list = list(boxes)
        _check_box_list(op, box_list)
        return _boxes_list_to_rois(box_list)
    if not isinstance(boxes, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `boxes` must be a Tensor[K, 5] or a list of Tensor[K, 4]")
    if boxes.dim() != 2 or boxes.size(1) != 5:
        raise ValueError(
            f"{op}: `boxes` must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of "
            f"Tensor[K, 4], got a tensor of shape {shape_str(boxes)}"
        )
    return boxes


def check_input(op: str, input: Tensor, dims: int = 4, name: str = "input") -> None:
    """Checks a feature tensor's rank, floating dtype and that its device has kernels."""
    if not isinstance(input, Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `{name}` must be a Tensor, got {type(input).__name__}")
    if input.dim() != dims:
        raise ValueError(
            f"{op}: `{name}` must be {dims}-D (N, C, H, W), got shape {shape_str(input)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"{op}: `{name}` must be a floating point tensor, got {input.dtype}")
    check_device(op, input)


def check_device(op: str, tensor: Tensor | None) -> None:
    """Raises when a CUDA tensor reaches an op of a library built without CUDA kernels.

    Asks the library (`_cuda_version`, an op) rather than `_library.CUDA_VERSION`: TorchScript
    cannot read module globals, and the call is made for CUDA tensors only.
    """
    if tensor is not None and tensor.is_cuda and torch.ops.detector._cuda_version() < 0:
        raise RuntimeError(
            f"{op}: got a CUDA tensor, but detector._C was built without CUDA kernels; "
            "rebuild with FORCE_CUDA=1 (or on a machine with a GPU)"
        )


def check_same_device(op: str, name: str, value: Tensor, reference: Tensor, ref_name: str) -> None:
    """Raises when `value` (argument `name`) is not on the device of `reference` (`ref_name`)."""
    if value.device != reference.device:
        raise ValueError(
            f"{op}: `{name}` is on {value.device} but `{ref_name}` is on {reference.device}; "
            "move them to the same device"
        )


def check_rois_dtype(op: str, input: Tensor, rois: Tensor) -> Tensor:
    """Casts `rois` to `input`'s dtype after checking it is floating point, unless
    `reduced_input_keeps_rois(input)`."""
    if not rois.is_floating_point():
        raise TypeError(f"{op}: `boxes` must be a floating point tensor, got {rois.dtype}")
    check_same_device(op, "boxes", rois, input, "input")
    if reduced_input_keeps_rois(input):
        return rois
    return rois.to(input.dtype)


def reduced_input_keeps_rois(input: Tensor) -> bool:
    """True for float16/bfloat16 `input` on the CPU, whose kernels read RoIs of any floating dtype
    in float32, or under autocast, whose kernels pass float32 RoIs on (detector/ops/_autocast.py):
    the RoIs are then not rounded to `input`'s dtype first (a box in bfloat16 loses whole
    pixels). Elsewhere the kernels take RoIs of the features' dtype."""
    # TorchScript's is_autocast_enabled takes no device
    if torch.jit.is_scripting():  # pyright: ignore[reportPrivateImportUsage]
        return False
    else:  # the `else` keeps TorchScript from compiling this branch
        reduced = input.dtype == torch.float16 or input.dtype == torch.bfloat16
        device = input.device.type
        return reduced and (device == "cpu" or torch.is_autocast_enabled(device))


def check_spatial_scale(op: str, value: float, name: str = "spatial_scale") -> float:
    """Returns `value` as a float after checking it is finite and > 0 (feature size / image size).

    A NaN, infinite, zero or negative scale would map every RoI to NaN or to a degenerate window;
    the error names the op and the argument instead.
    """
    scale = float(value)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(
            f"{op}: `{name}` must be a finite number > 0 (feature map size / image size, e.g. "
            f"1/16 for a stride-16 map), got {value}"
        )
    return scale
