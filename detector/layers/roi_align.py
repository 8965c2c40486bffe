"""RoIAlign layer (Mask R-CNN): an nn.Module over `detector.ops.roi_align`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops._utils import BroadcastingList2
from detector.ops.roi_align import roi_align

torch.fx.wrap("roi_align")  # a leaf of FX graphs traced through this module, as in torchvision


class RoIAlign(nn.Module):
    """Pools RoIs (K, 5) or list[Tensor[K_i, 4]] from features (N, C, H, W) into (K, C, ph, pw).

    Args:
        output_size: (ph, pw), or an int for a square output.
        spatial_scale: feature map size / image size (1/16 for a stride-16 map).
        sampling_ratio: sample points per bin along each axis; <= 0 for adaptive.
        aligned: half-pixel correction (ROIAlignV2).
        mode: "avg" (mean of the sample points, torchvision's RoIAlign) or "max".
    """

    def __init__(
        self,
        output_size: BroadcastingList2[int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
        mode: str = "avg",
    ) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"RoIAlign: `mode` must be 'avg' or 'max', got '{mode}'")
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """input (N, C, H, W), rois (K, 5) or list[Tensor[K_i, 4]] -> (K, C, ph, pw)."""
        return roi_align(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.mode,
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, mode={self.mode!r})"
        )
