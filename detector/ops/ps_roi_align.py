"""Position-sensitive RoI Align, as torchvision.ops.ps_roi_align.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) = output_size, B = PH * PW bins.
The input has C = C_out * B channels; bin (i, j) of output channel c averages bilinear samples
of input channel c * B + i * PW + j (R-FCN's position-sensitive pooling with RoI Align sampling).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops._ps_roi import prepare_ps_roi_args, register_ps_roi_op
from detector.ops._utils import BroadcastingList2, check_spatial_scale

_OP = "ps_roi_align"


@torch.fx.wrap
def ps_roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align.

    Args:
        input: Tensor[N, C_out * PH * PW, H, W]: float32, float64, or float16/bfloat16 (computed in
            float32), in any memory format.
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2), or a list of Tensor[K_i, 4].
        output_size: (PH, PW), or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).
        sampling_ratio: sample points per bin side; <= 0 uses ceil(bin size) points.

    Returns:
        Tensor[K, C_out, PH, PW]. Boxes are shifted by -0.5 pixel as in torchvision (pixel
        centres at integer coordinates). A zero-height or zero-width box with adaptive sampling
        gives 0 (torchvision gives NaN there).
    """
    op = "ps_roi_align"
    rois, pooled_height, pooled_width = prepare_ps_roi_args(op, input, boxes, output_size)
    if not isinstance(sampling_ratio, int):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{op}: `sampling_ratio` must be an int, got {sampling_ratio}")
    scale = check_spatial_scale(op, spatial_scale)
    return torch.ops.detector.ps_roi_align(
        input, rois, scale, pooled_height, pooled_width, sampling_ratio
    )


register_ps_roi_op(_OP)
