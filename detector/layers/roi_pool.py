"""RoIPool layer: Fast R-CNN max pooling of RoIs into a fixed grid (see detector.ops.roi_pool)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops._utils import pair
from detector.ops.roi_pool import roi_pool

torch.fx.wrap("roi_pool")  # a leaf of FX graphs traced through this module


class RoIPool(nn.Module):
    """Max-pools each RoI into an `output_size` grid, as torchvision.ops.RoIPool.

    Args:
        output_size: (PH, PW) or an int for a square grid.
        spatial_scale: factor from image to feature coordinates (1/stride, e.g. 1/16).
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = pair("RoIPool", output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """(N, C, H, W) features and Tensor[K, 5] or list[Tensor[K_i, 4]] -> (K, C, PH, PW)."""
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )
