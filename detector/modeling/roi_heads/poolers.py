"""RoI poolers: per-RoI fixed-size features from one feature map or from an FPN pyramid.

Shape glossary: N images, L pooled levels, C channels, R RoIs over the batch (in image order),
S = POOLER_RESOLUTION, C_out = C / (S*S) for position-sensitive types.

    pooler = build_pooler(cfg.MODEL.ROI_BOX_HEAD)
    pooled = pooler(features, [rois.proposal_boxes for rois in sampled])  # (R, C, S, S)

A `Pooler` assigns each RoI to a level (with several levels, FPN paper eq. 1, as torchvision's
LevelMapper) and pools it with one of the registered POOLER_TYPEs (detector.modeling.registry
.POOLERS):

    ROIPool                 max pooling over quantized bins (Fast R-CNN)
    ROIAlign                bilinear average, aligned=False (Mask R-CNN, maskrcnn_benchmark)
    ROIAlignV2              ROIAlign with the half-pixel shift (aligned=True, detectron2)
    ROIAlignMax             bilinear samples, max per bin (roi_align mode="max")
    DeformRoIPool           deformable RoI pooling (DCN v1), offsets from an fc branch
    ModulatedDeformRoIPool  same with a sigmoid modulation mask per bin (DCN v2)
    PSRoIPool, PSRoIAlign   position-sensitive pooling (R-FCN); (R, C_out, S, S) output
    DeformPSRoIPool         deformable position-sensitive pooling (Deformable R-FCN)

The deformable types pool once without offsets, predict normalized offsets (and the mask) from
those features with fully connected layers, and pool again with them. The last layer of each
branch is zero-initialized, so an untrained DeformRoIPool equals plain pooling (ROIAlignV2's
convention) and an untrained modulated one is half of it (mask = sigmoid(0) = 0.5, as DCN v2).

Mixed precision: the compiled ops' CPU kernels take float32/float64 only, and boxes in half
precision would lose whole pixels, so half/bfloat16 features are pooled in float32 (as
torchvision's autocast rule for roi_align) and the result is cast back to the features' dtype.
Boxes of any floating dtype are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detector import ops
from detector.modeling.registry import POOLERS
from detector.ops.poolers import assign_fpn_levels
from detector.structures import Boxes, as_size

__all__ = [
    "LevelPool",
    "Pooler",
    "build_pooler",
    "assign_fpn_levels",
]

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# FPN levels (assign_fpn_levels, FPN eq. 1, is shared with detector.ops.MultiScaleRoIAlign)
# --------------------------------------------------------------------------------------------
def _level_of_scale(scale: float) -> int:
    """The pyramid level of a feature map of spatial scale 2^-level (1/4 -> 2)."""
    level = -math.log2(scale)
    if abs(level - round(level)) > 1e-6:
        raise ValueError(
            f"POOLER_SCALES: with several levels every scale must be a power of 2 "
            f"(1/4, 1/8, ...), got {scale}"
        )
    return round(level)


# --------------------------------------------------------------------------------------------
# Pooling of one level, one class per POOLER_TYPE
# --------------------------------------------------------------------------------------------
class LevelPool(nn.Module):
    """Pools RoIs ``(K, 5)`` (batch_index, x1, y1, x2, y2) from one map ``(N, C, H, W)``.

    Subclasses implement `forward(feature, rois, spatial_scale) -> (K, C', S, S)`.
    """

    position_sensitive: bool = False

    def __init__(
        self, *, output_size: int, sampling_ratio: int = 0, gamma: float = 0.1, in_channels: int = 0
    ) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)
        self.in_channels = int(in_channels)

    def pool_levels(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, scales: list[float]
    ) -> Tensor:
        """Pools RoI k from ``features[levels[k]]``; ``(K, C', S, S)`` in RoI order."""
        output = None
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled = self(feature, rois[index], scale)
            if output is None:
                output = pooled.new_zeros((rois.size(0), *pooled.shape[1:]))
            output = output.index_copy(0, index, pooled)
        return output


class _RoIAlignBase(LevelPool):
    aligned = False
    mode = "avg"

    def forward(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        return ops.roi_align(
            feature, rois, self.output_size, spatial_scale, self.sampling_ratio, self.aligned,
            mode=self.mode,
        )  # fmt: skip

    def pool_levels(
        self, features: list[Tensor], rois: Tensor, levels: Tensor, scales: list[float]
    ) -> Tensor:
        return ops.multi_scale_roi_align(
            features, rois, levels, self.output_size, scales, self.sampling_ratio, self.aligned,
            mode=self.mode,
        )  # fmt: skip


@POOLERS.register("ROIAlign")
class RoIAlignPool(_RoIAlignBase):
    """RoI Align with aligned=False (maskrcnn_benchmark, torchvision's MultiScaleRoIAlign)."""


@POOLERS.register("ROIAlignV2")
class RoIAlignV2Pool(_RoIAlignBase):
    """RoI Align with the half-pixel shift (aligned=True)."""

    aligned = True


@POOLERS.register("ROIAlignMax")
class RoIAlignMaxPool(_RoIAlignBase):
    """RoI Align taking each bin's maximum bilinear sample (mode="max")."""

    mode = "max"


@POOLERS.register("ROIPool")
class RoIPoolPool(LevelPool):
    """Max pooling over quantized bins (Fast R-CNN); ignores the sampling ratio."""

    def forward(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        return ops.roi_pool(feature, rois, self.output_size, spatial_scale)


@POOLERS.register("PSRoIPool")
class PSRoIPoolPool(LevelPool):
    """Position-sensitive RoI pooling (R-FCN): ``(N, C_out*S*S, H, W) -> (K, C_out, S, S)``."""

    position_sensitive = True

    def forward(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        return ops.ps_roi_pool(feature, rois, self.output_size, spatial_scale)


@POOLERS.register("PSRoIAlign")
class PSRoIAlignPool(LevelPool):
    """Position-sensitive RoI Align: ``(N, C_out*S*S, H, W) -> (K, C_out, S, S)``."""

    position_sensitive = True

    def forward(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        return ops.ps_roi_align(feature, rois, self.output_size, spatial_scale, self.sampling_ratio)


def _zero_init_fc(in_features: int, hidden: int, out_features: int, layers: int) -> nn.Sequential:
    """``layers`` fully connected layers with ReLUs between; the last one starts at zero."""
    modules: list[nn.Module] = []
    width = in_features
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    last = nn.Linear(width, out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*modules, last)


class _DeformPoolBase(LevelPool):
    """Deformable (PS) RoI pooling whose offsets an fc branch predicts from plain pooling.

    Args (beyond LevelPool's):
        in_channels: channels C of the pooled map (for PS types C_out * S * S).
        hidden_dim: width of the offset / mask branches (1024 as mmdetection's).
    """

    modulated = False

    def __init__(
        self,
        *,
        output_size: int,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
        in_channels: int = 0,
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__(
            output_size=output_size,
            sampling_ratio=sampling_ratio,
            gamma=gamma,
            in_channels=in_channels,
        )
        if in_channels <= 0:
            raise ValueError(
                f"{type(self).__name__}: deformable RoI pooling needs `in_channels` (the "
                "channels of the pooled feature map) to size its offset branch; pass "
                "build_pooler(head_cfg, in_channels=...)"
            )
        bins = self.output_size * self.output_size
        pooled_channels = in_channels // bins if self.position_sensitive else in_channels
        in_features = pooled_channels * bins
        self.offset_fc = _zero_init_fc(in_features, hidden_dim, 2 * bins, layers=3)
        self.mask_fc = (
            _zero_init_fc(in_features, hidden_dim, bins, layers=2) if self.modulated else None
        )

    def _op(
        self,
        feature: Tensor,
        rois: Tensor,
        offset: Tensor | None,
        spatial_scale: float,
        mask: Tensor | None = None,
    ) -> Tensor:
        pool = ops.deform_ps_roi_pool if self.position_sensitive else ops.deform_roi_pool
        return pool(
            feature, rois, offset, self.output_size, spatial_scale, self.sampling_ratio,
            self.gamma, mask,
        )  # fmt: skip

    def forward(self, feature: Tensor, rois: Tensor, spatial_scale: float) -> Tensor:
        size = self.output_size
        plain = self._op(feature, rois, None, spatial_scale)  # (K, C', S, S)
        flat = plain.flatten(1)  # (K, C', S, S) -> (K, C'*S*S)
        offset = self.offset_fc(flat).view(-1, 2, size, size)  # (K, 2*S*S) -> (K, 2, S, S)
        mask = None
        if self.mask_fc is not None:
            mask = torch.sigmoid(self.mask_fc(flat)).view(-1, 1, size, size)
        return self._op(feature, rois, offset.to(feature.dtype), spatial_scale, mask)


@POOLERS.register("DeformRoIPool")
class DeformRoIPoolPool(_DeformPoolBase):
    """Deformable RoI pooling (DCN v1)."""


@POOLERS.register("ModulatedDeformRoIPool")
class ModulatedDeformRoIPoolPool(_DeformPoolBase):
    """Modulated deformable RoI pooling (DCN v2)."""

    modulated = True


@POOLERS.register("DeformPSRoIPool")
class DeformPSRoIPoolPool(_DeformPoolBase):
    """Deformable position-sensitive RoI pooling (Deformable R-FCN)."""

    position_sensitive = True


# --------------------------------------------------------------------------------------------
# Pooler
# --------------------------------------------------------------------------------------------
class Pooler(nn.Module):
    """Pools every RoI of a batch from its feature level.

    Args:
        level_pool: the pooling of one level (a registered POOLER_TYPE).
        scales: spatial scale (1 / stride) of each pooled level, finest first, e.g.
            (1/4, 1/8, 1/16, 1/32) for P2..P5 or (1/16,) for C4.
        canonical_scale, canonical_level: FPN eq. 1's 224 and k0 = 4.

    Forward: features (at least L maps ``(N, C, H_l, W_l)``, finest first; extra coarser maps
    such as P6 are ignored), boxes (N Boxes or ``(R_i, 4)`` tensors) -> ``(R, C', S, S)``.
    """

    def __init__(
        self,
        *,
        level_pool: LevelPool,
        scales: Sequence[float],
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if len(scales) == 0:
            raise ValueError("POOLER_SCALES: needs at least one scale")
        self.level_pool = level_pool
        self.scales = [float(s) for s in scales]
        self.output_size = level_pool.output_size
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        if len(self.scales) > 1:
            self.min_level = _level_of_scale(self.scales[0])
            self.max_level = _level_of_scale(self.scales[-1])
            if self.max_level - self.min_level + 1 != len(self.scales):
                raise ValueError(
                    f"POOLER_SCALES {self.scales}: levels must be consecutive powers of 2, "
                    "finest first"
                )

    @property
    def position_sensitive(self) -> bool:
        """Whether this pools position-sensitive score maps (output C / (S*S) channels)."""
        return self.level_pool.position_sensitive

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Boxes | Tensor]) -> Tensor:
        num_levels = len(self.scales)
        if len(features) < num_levels:
            raise ValueError(
                f"Pooler: POOLER_SCALES has {num_levels} levels but only {len(features)} "
                "feature maps were given"
            )
        if len(boxes) != features[0].size(0):
            raise ValueError(
                f"Pooler: {len(boxes)} lists of boxes for a batch of {features[0].size(0)} images"
            )
        features = list(features[:num_levels])
        dtype = features[0].dtype
        compute_dtype = torch.float32 if dtype in _REDUCED_PRECISION else dtype
        box_tensors = [b.tensor if isinstance(b, Boxes) else b for b in boxes]
        rois = _rois_from_boxes(box_tensors, features[0].device)  # (R, 5) in float32 or wider
        features = [f.to(compute_dtype) for f in features]
        rois_c = rois.to(compute_dtype)
        if num_levels == 1:
            pooled = self.level_pool(features[0], rois_c, self.scales[0])
        else:
            levels = assign_fpn_levels(
                rois[:, 1:], self.min_level, self.max_level, self.canonical_scale,
                self.canonical_level,
            )  # fmt: skip
            pooled = self.level_pool.pool_levels(features, rois_c, levels, self.scales)
        return pooled.to(dtype)


def _rois_from_boxes(boxes: list[Tensor], device: torch.device) -> Tensor:
    """N box tensors ``(R_i, 4)`` -> ``(R, 5)`` (batch_index, x1, y1, x2, y2), float32 or wider."""
    dtype = torch.promote_types(torch.float32, boxes[0].dtype)
    concat = torch.cat([b.to(device, dtype).reshape(-1, 4) for b in boxes], dim=0)
    # as_size, not len(b): a traced size stays symbolic
    batch_index = torch.cat(
        [
            torch.full((as_size(b.shape[0]),), i, dtype=dtype, device=device)
            for i, b in enumerate(boxes)
        ]
    )
    return torch.cat([batch_index[:, None], concat], dim=1)


def build_pooler(head_cfg: Any, in_channels: int | None = None) -> Pooler:
    """The pooler of a head config (cfg.MODEL.ROI_BOX_HEAD or cfg.MODEL.ROI_MASK_HEAD).

    Reads POOLER_TYPE, POOLER_RESOLUTION, POOLER_SCALES, POOLER_SAMPLING_RATIO and DEFORM_GAMMA.
    `in_channels` (channels of the pooled maps) is needed by the deformable types only.
    """
    level_pool_cls = POOLERS.get(str(head_cfg.POOLER_TYPE))
    gamma = float(head_cfg.DEFORM_GAMMA) if "DEFORM_GAMMA" in head_cfg else 0.1
    level_pool = level_pool_cls(
        output_size=int(head_cfg.POOLER_RESOLUTION),
        sampling_ratio=int(head_cfg.POOLER_SAMPLING_RATIO),
        gamma=gamma,
        in_channels=int(in_channels or 0),
    )
    return Pooler(level_pool=level_pool, scales=list(head_cfg.POOLER_SCALES))
