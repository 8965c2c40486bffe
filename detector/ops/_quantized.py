"""Quantized (quint8, per-tensor) inputs of roi_align and nms, as torchvision.ops accepts them.

roi_align pools the dequantized features at the dequantized RoIs (both must be quantized, as in
torchvision) and quantizes the result with the features' scale and zero point; nms suppresses on
the dequantized boxes and scores (IoUs and the score order do not depend on the affine scale).
Eager mode only, as in torchvision: TorchScript compiles the float path.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dequantized_rois(op: str, boxes: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """The RoIs of a quantized `input`, dequantized; they must be quantized too (torchvision)."""
    box_list = list(boxes) if isinstance(boxes, (list, tuple)) else [boxes]
    if not all(isinstance(b, Tensor) and b.is_quantized for b in box_list):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"{op}: `input` is quantized, so `boxes` must be quantized too")
    dequantized = [b.dequantize() for b in box_list]
    return dequantized if isinstance(boxes, (list, tuple)) else dequantized[0]


def requantize_like(output: Tensor, input: Tensor) -> Tensor:
    """`output` quantized with the scale, zero point and dtype of the quantized `input`."""
    return torch.quantize_per_tensor(output, input.q_scale(), input.q_zero_point(), input.dtype)
