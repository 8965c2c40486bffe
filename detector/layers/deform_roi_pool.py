"""nn.Modules over deformable RoI pooling: DeformRoIPool and DeformPSRoIPool (DCN v1/v2).

The offsets (and the DCN v2 mask) are inputs of `forward`; the branch that learns them (an fc on
plainly pooled features) belongs to the pooler that uses these layers
(detector.modeling.roi_heads.poolers.DeformLevelPool).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops._utils import BroadcastingList2, pair
from detector.ops.deform_roi_pool import deform_ps_roi_pool, deform_roi_pool

# leaves of FX graphs traced through this module
torch.fx.wrap("deform_roi_pool")
torch.fx.wrap("deform_ps_roi_pool")


class _DeformRoIPoolLayer(nn.Module):
    """Both forms: the arguments, the printout, and the forward on the op of the form."""

    # which op the layer runs: deform_ps_roi_pool (True) or deform_roi_pool; set by each form
    POSITION_SENSITIVE: bool = False

    def __init__(
        self,
        output_size: BroadcastingList2[int],
        spatial_scale: float,
        sampling_ratio: int = -1,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.output_size = pair(self.__class__.__name__, output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)
        self.position_sensitive = self.POSITION_SENSITIVE

    def forward(
        self,
        input: Tensor,
        rois: Tensor | list[Tensor],
        offset: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        if self.position_sensitive:
            return deform_ps_roi_pool(
                input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
                self.gamma, mask,
            )  # fmt: skip
        return deform_roi_pool(
            input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
            self.gamma, mask,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"gamma={self.gamma})"
        )


class DeformRoIPool(_DeformRoIPoolLayer):
    """Deformable RoI pooling; see `detector.ops.deform_roi_pool`.

    forward(input: Tensor[N, C, H, W], rois: Tensor[K, 5] | list[Tensor[K_i, 4]],
            offset: Tensor[K, 2, ph, pw] | None, mask: Tensor[K, 1, ph, pw] | None)
        -> Tensor[K, C, ph, pw]
    """

    POSITION_SENSITIVE = False


class DeformPSRoIPool(_DeformRoIPoolLayer):
    """Deformable position-sensitive RoI pooling; see `detector.ops.deform_ps_roi_pool`.

    forward(input: Tensor[N, C_out * ph * pw, H, W], rois, offset: Tensor[K, 2, ph, pw] | None
            (shared by all output channels), mask: Tensor[K, 1, ph, pw] | None)
        -> Tensor[K, C_out, ph, pw]
    """

    POSITION_SENSITIVE = True
