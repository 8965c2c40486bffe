"""nn.Module over position-sensitive RoI pooling (R-FCN)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops.ps_roi_pool import ps_roi_pool

torch.fx.wrap("ps_roi_pool")  # a leaf of FX graphs traced through this module


class PSRoIPool(nn.Module):
    """Position-sensitive RoI pooling; see `detector.ops.ps_roi_pool`.

    Args:
        output_size: (PH, PW) bins, or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """(N, C_out * PH * PW, H, W) features and K RoIs -> (K, C_out, PH, PW)."""
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )
