"""Argument handling shared by the op wrappers: RoI formats, output sizes and device checks.

RoIs are accepted exactly as torchvision.ops accepts them: a Tensor[K, 5] of
(batch_index, x1, y1, x2, y2) or a list of Tensor[K_i, 4] boxes, one per image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detector.ops._library import CUDA_VERSION


def pair(
    op: str, value: int | tuple[int, int] | list[int], name: str = "output_size"
) -> tuple[int, int]:
    """Turns an int or a 2-sequence into (height, width), with an error naming `op` and `name`."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{op}: `{name}` must be an int or a pair of ints, got {value!r}")


def convert_boxes_to_roi_format(op: str, boxes: Tensor | list[Tensor]) -> Tensor:
    """Returns RoIs as Tensor[K, 5] (batch_index, x1, y1, x2, y2), checking the shapes.

    Args:
        op: name of the calling op, used in error messages.
        boxes: Tensor[K, 5], or a list/tuple of Tensor[K_i, 4] (one per image).
    """
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.size(1) != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{op}: `boxes[{i}]` must be a Tensor[K, 4], got {shape}")
        if len(boxes) == 0:
            raise ValueError(f"{op}: `boxes` is an empty list; pass one Tensor[K, 4] per image")
        concat = torch.cat(list(boxes), dim=0)
        # (K_i,) per image -> (K, 1) batch indices
        indices = torch.cat(
            [
                torch.full((b.size(0), 1), float(i), dtype=concat.dtype, device=concat.device)
                for i, b in enumerate(boxes)
            ],
            dim=0,
        )
        return torch.cat([indices, concat], dim=1)
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{op}: `boxes` must be a Tensor[K, 5] or a list of Tensor[K, 4]")
    if boxes.dim() != 2 or boxes.size(1) != 5:
        raise ValueError(
            f"{op}: `boxes` must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of "
            f"Tensor[K, 4], got a tensor of shape {tuple(boxes.shape)}"
        )
    return boxes


def check_input(op: str, input: Tensor, dims: int = 4, name: str = "input") -> None:
    """Checks a feature tensor's rank, floating dtype and that its device has kernels."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: `{name}` must be a Tensor, got {type(input).__name__}")
    if input.dim() != dims:
        raise ValueError(
            f"{op}: `{name}` must be {dims}-D (N, C, H, W), got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"{op}: `{name}` must be a floating point tensor, got {input.dtype}")
    check_device(op, input)


def check_device(op: str, *tensors: Tensor | None) -> None:
    """Raises when a CUDA tensor reaches an op of a library built without CUDA kernels."""
    for t in tensors:
        if t is not None and t.is_cuda and CUDA_VERSION < 0:
            raise RuntimeError(
                f"{op}: got a CUDA tensor, but detector._C was built without CUDA kernels; "
                "rebuild with FORCE_CUDA=1 (or on a machine with a GPU)"
            )


def check_rois_dtype(op: str, input: Tensor, rois: Tensor) -> Tensor:
    """Casts `rois` to `input`'s dtype (as under autocast) after checking it is floating point."""
    if not rois.is_floating_point():
        raise TypeError(f"{op}: `boxes` must be a floating point tensor, got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(
            f"{op}: `boxes` is on {rois.device} but `input` is on {input.device}; "
            "move them to the same device"
        )
    return rois.to(input.dtype)


def check_spatial_scale(op: str, value: float, name: str = "spatial_scale") -> float:
    """Returns `value` as a float after checking it is finite and > 0 (feature size / image size).

    A NaN, infinite, zero or negative scale would map every RoI to NaN or to a degenerate window;
    the error names the op and the argument instead.
    """
    scale = float(value)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(
            f"{op}: `{name}` must be a finite number > 0 (feature map size / image size, e.g. "
            f"1/16 for a stride-16 map), got {value!r}"
        )
    return scale
