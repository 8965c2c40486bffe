"""nn.Modules over deformable RoI pooling: DeformRoIPool and DeformPSRoIPool (DCN v1/v2).

The offsets (and the DCN v2 mask) are inputs of `forward`; the branch that learns them (an fc on
plainly pooled features) belongs to the pooler that uses these layers.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.ops._utils import pair
from detector.ops.deform_roi_pool import deform_ps_roi_pool, deform_roi_pool


class _DeformPoolBase(nn.Module):
    """Holds the arguments shared by both forms and prints them."""

    _op_name = ""
    _pool = None  # the op function of the form: deform_roi_pool or deform_ps_roi_pool

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int = -1,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.output_size = pair(self._op_name, output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"gamma={self.gamma})"
        )

    def forward(
        self,
        input: Tensor,
        rois: Tensor | list[Tensor],
        offset: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        return self._pool(
            input,
            rois,
            offset,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.gamma,
            mask,
        )


class DeformRoIPool(_DeformPoolBase):
    """Deformable RoI pooling; see `detector.ops.deform_roi_pool`.

    forward(input: Tensor[N, C, H, W], rois: Tensor[K, 5] | list[Tensor[K_i, 4]],
            offset: Tensor[K, 2, ph, pw] | None, mask: Tensor[K, 1, ph, pw] | None)
        -> Tensor[K, C, ph, pw]
    """

    _op_name = "DeformRoIPool"
    _pool = staticmethod(deform_roi_pool)


class DeformPSRoIPool(_DeformPoolBase):
    """Deformable position-sensitive RoI pooling; see `detector.ops.deform_ps_roi_pool`.

    forward(input: Tensor[N, C_out * ph * pw, H, W], rois, offset: Tensor[K, 2, ph, pw] | None
            (shared by all output channels), mask: Tensor[K, 1, ph, pw] | None)
        -> Tensor[K, C_out, ph, pw]
    """

    _op_name = "DeformPSRoIPool"
    _pool = staticmethod(deform_ps_roi_pool)
