"""Position-sensitive RoI pooling (R-FCN, Dai et al. 2016), as torchvision.ops.ps_roi_pool.

Shapes: N images, K RoIs, C_out output channels, (PH, PW) = output_size, B = PH * PW bins.
The input has C = C_out * B channels; bin (i, j) of output channel c averages input channel
c * B + i * PW + j over the bin's pixels (R-FCN eq. 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detector.ops._ps_roi import prepare_ps_roi_args, register_ps_roi_op
from detector.ops._utils import BroadcastingList2, check_spatial_scale

_OP = "ps_roi_pool"


@torch.fx.wrap
def ps_roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling.

    Args:
        input: Tensor[N, C_out * PH * PW, H, W]: float32, float64, or float16/bfloat16 (computed in
            float32), in any memory format.
        boxes: Tensor[K, 5] of (batch_index, x1, y1, x2, y2), or a list of Tensor[K_i, 4].
        output_size: (PH, PW), or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).

    Returns:
        Tensor[K, C_out, PH, PW]. As in torchvision, the box is rounded to whole pixels, bins
        are clipped to [0, H - 1] x [0, W - 1] and an empty bin gives 0.
    """
    op = "ps_roi_pool"
    rois, pooled_height, pooled_width = prepare_ps_roi_args(op, input, boxes, output_size)
    return torch.ops.detector.ps_roi_pool(
        input, rois, check_spatial_scale(op, spatial_scale), pooled_height, pooled_width
    )


register_ps_roi_op(_OP)
