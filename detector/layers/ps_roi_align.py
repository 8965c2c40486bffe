"""nn.Module over position-sensitive RoI Align."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops.ps_roi_align import ps_roi_align

torch.fx.wrap("ps_roi_align")  # a leaf of FX graphs traced through this module


class PSRoIAlign(nn.Module):
    """Position-sensitive RoI Align; see `detector.ops.ps_roi_align`.

    Args:
        output_size: (PH, PW) bins, or an int for both.
        spatial_scale: feature-map pixels per box unit (e.g. 1/16 for a stride-16 map).
        sampling_ratio: sample points per bin side; <= 0 uses ceil(bin size) points.
    """

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """(N, C_out * PH * PW, H, W) features and K RoIs -> (K, C_out, PH, PW)."""
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio})"
        )
