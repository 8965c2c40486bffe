"""RoI poolers: per-RoI fixed-size features from one feature map or from an FPN pyramid.

Shape glossary: N images, L pooled levels, C channels, R RoIs over the batch (in image order),
S = POOLER_RESOLUTION, C_out = C / (S*S) for position-sensitive types.

    pooler = build_pooler(cfg.MODEL.ROI_BOX_HEAD)
    pooled = pooler(features, [rois.proposal_boxes for rois in sampled])  # (R, C, S, S)

A `Pooler` assigns each RoI to a level (with several levels, FPN paper eq. 1, as torchvision's
LevelMapper) and pools it with the `LevelPool` of one of the registered POOLER_TYPEs
(detector.modeling.registry.POOLERS), which holds one detector.layers module per level:

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

Mixed precision: boxes in half precision would lose whole pixels, so the RoIs stay in float32
(or wider). On the CPU every pooler type pools float16/bfloat16 features with the ops' own reduced
kernels (float32 RoIs, float32 accumulation, one rounding: the bits of pooling in float32, without
a float32 copy of the pyramid; detector/ops/_autocast.py), under autocast or not; under CUDA
autocast the ops' autocast kernels pool in float32; reduced features on CUDA outside autocast are
pooled in float32 here (`reduced_input_keeps_rois`). The result has the features' dtype. Boxes of
any floating dtype are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from detector import ops
from detector.config.defaults import PooledHeadConfig
from detector.layers import (
    DeformPSRoIPool,
    DeformRoIPool,
    PSRoIAlign,
    PSRoIPool,
    RoIAlign,
    RoIPool,
)
from detector.modeling.registry import POOLERS
from detector.ops.poolers import assign_fpn_levels, reduced_input_keeps_rois
from detector.structures import Boxes, as_size

__all__ = [
    "DeformLevelPool",
    "LevelPool",
    "PoolSettings",
    "Pooler",
    "RoIAlignLevelPool",
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
# The pooling of every level: one detector.layers module per level, one class per kind of op
# --------------------------------------------------------------------------------------------
class LevelPool(nn.Module):
    """Pools RoIs ``(R, 5)`` (batch_index, x1, y1, x2, y2), RoI k from map ``levels[k]``, with
    `layers[l]` (a detector.layers module built for level l's spatial scale).

    Args:
        layers: one layer per pooled level, finest first; each is called as
            ``layer(feature (N, C, H, W), rois (K, 5)) -> (K, C', S, S)``.
        output_size: S.
        position_sensitive: the layers pool position-sensitive maps (C' = C / (S*S)).
    """

    def __init__(
        self, layers: Sequence[nn.Module], *, output_size: int, position_sensitive: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output_size = output_size
        self.position_sensitive = position_sensitive

    def forward(self, features: list[Tensor], rois: Tensor, levels: Tensor | None) -> Tensor:
        """``(R, C', S, S)`` in RoI order; `levels` None with a single level."""
        if levels is None:
            return self.pool(0, features[0], rois)
        output = None
        for level, feature in enumerate(features):
            index = torch.nonzero(levels == level).squeeze(1)
            pooled = self.pool(level, feature, rois[index])
            if output is None:
                output = pooled.new_zeros((rois.size(0), *pooled.shape[1:]))
            output = output.index_copy(0, index, pooled)
        assert output is not None  # at least one level
        return output

    def pool(self, level: int, feature: Tensor, rois: Tensor) -> Tensor:
        """RoIs ``(K, 5)`` pooled from one level's map: ``(K, C', S, S)``."""
        return self.layers[level](feature, rois)


class RoIAlignLevelPool(LevelPool):
    """RoI Align on every level (`layers.RoIAlign`), the levels pooled in one call of
    `ops.multi_scale_roi_align`."""

    def forward(self, features: list[Tensor], rois: Tensor, levels: Tensor | None) -> Tensor:
        if levels is None:
            return self.pool(0, features[0], rois)
        layers = cast("list[RoIAlign]", list(self.layers))  # as _roi_align builds them
        first = layers[0]
        scales = [layer.spatial_scale for layer in layers]
        # BroadcastingList2 (output_size) is untyped for pyright
        return ops.multi_scale_roi_align(  # pyright: ignore[reportUnknownMemberType]
            features, rois, levels, self.output_size, scales, first.sampling_ratio,
            first.aligned, mode=first.mode,
        )  # fmt: skip


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


class DeformLevelPool(LevelPool):
    """Deformable (PS) RoI pooling (`layers.DeformRoIPool` / `DeformPSRoIPool` per level) whose
    offsets, and with `modulated` the DCN v2 mask, an fc branch predicts from plain pooling.

    Args (beyond LevelPool's):
        in_channels: channels C of the pooled map (for PS types C_out * S * S).
        modulated: also predict a sigmoid mask per bin (DCN v2).
        hidden_dim: width of the offset / mask branches (1024 as mmdetection's).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        *,
        output_size: int,
        position_sensitive: bool,
        in_channels: int,
        modulated: bool,
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__(layers, output_size=output_size, position_sensitive=position_sensitive)
        if in_channels <= 0:
            raise ValueError(
                f"{type(layers[0]).__name__}: deformable RoI pooling needs `in_channels` (the "
                "channels of the pooled feature map) to size its offset branch; pass "
                "build_pooler(head_cfg, in_channels=...)"
            )
        bins = output_size * output_size
        pooled_channels = in_channels // bins if position_sensitive else in_channels
        in_features = pooled_channels * bins
        self.gamma = layers[0].gamma
        self.offset_fc = _zero_init_fc(in_features, hidden_dim, 2 * bins, layers=3)
        self.mask_fc = _zero_init_fc(in_features, hidden_dim, bins, layers=2) if modulated else None

    def pool(self, level: int, feature: Tensor, rois: Tensor) -> Tensor:
        layer, size = self.layers[level], self.output_size
        plain = layer(feature, rois)  # (K, C', S, S)
        flat = plain.flatten(1)  # (K, C', S, S) -> (K, C'*S*S)
        offset = self.offset_fc(flat).view(-1, 2, size, size)  # (K, 2*S*S) -> (K, 2, S, S)
        mask = None
        if self.mask_fc is not None:
            mask = torch.sigmoid(self.mask_fc(flat)).view(-1, 1, size, size)
        return layer(feature, rois, offset.to(feature.dtype), mask)


# --------------------------------------------------------------------------------------------
# POOLER_TYPE -> the LevelPool of given scales
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSettings:
    """What build_pooler reads from a head config: S, POOLER_SAMPLING_RATIO, DEFORM_GAMMA and
    the channels of the pooled maps (deformable types only)."""

    output_size: int
    sampling_ratio: int
    gamma: float = 0.1
    in_channels: int = 0


def _roi_align(aligned: bool, mode: str) -> Callable[[PoolSettings, list[float]], LevelPool]:
    def build(p: PoolSettings, scales: list[float]) -> LevelPool:
        layers = [
            RoIAlign(p.output_size, s, p.sampling_ratio, aligned=aligned, mode=mode) for s in scales
        ]
        return RoIAlignLevelPool(layers, output_size=p.output_size)

    return build


def _deform(position_sensitive: bool, modulated: bool) -> Callable[..., LevelPool]:
    layer_cls = DeformPSRoIPool if position_sensitive else DeformRoIPool

    def build(p: PoolSettings, scales: list[float]) -> LevelPool:
        layers = [layer_cls(p.output_size, s, p.sampling_ratio, p.gamma) for s in scales]
        return DeformLevelPool(
            layers, output_size=p.output_size, position_sensitive=position_sensitive,
            in_channels=p.in_channels, modulated=modulated,
        )  # fmt: skip

    return build


def _register_level_pools() -> None:
    """ROIAlign (aligned=False, maskrcnn_benchmark), ROIAlignV2 (aligned=True, detectron2),
    ROIAlignMax (max per bin), ROIPool, PSRoIPool, PSRoIAlign and the deformable types."""
    POOLERS.register("ROIAlign")(_roi_align(aligned=False, mode="avg"))
    POOLERS.register("ROIAlignV2")(_roi_align(aligned=True, mode="avg"))
    POOLERS.register("ROIAlignMax")(_roi_align(aligned=False, mode="max"))

    def roi_pool(p: PoolSettings, scales: list[float]) -> LevelPool:
        return LevelPool([RoIPool(p.output_size, s) for s in scales], output_size=p.output_size)

    def ps_roi_pool(p: PoolSettings, scales: list[float]) -> LevelPool:
        return LevelPool(
            [PSRoIPool(p.output_size, s) for s in scales],
            output_size=p.output_size,
            position_sensitive=True,
        )  # fmt: skip

    def ps_roi_align(p: PoolSettings, scales: list[float]) -> LevelPool:
        return LevelPool(
            [PSRoIAlign(p.output_size, s, p.sampling_ratio) for s in scales],
            output_size=p.output_size,
            position_sensitive=True,
        )  # fmt: skip

    POOLERS.register("ROIPool")(roi_pool)
    POOLERS.register("PSRoIPool")(ps_roi_pool)
    POOLERS.register("PSRoIAlign")(ps_roi_align)
    POOLERS.register("DeformRoIPool")(_deform(position_sensitive=False, modulated=False))
    POOLERS.register("ModulatedDeformRoIPool")(_deform(position_sensitive=False, modulated=True))
    POOLERS.register("DeformPSRoIPool")(_deform(position_sensitive=True, modulated=False))


_register_level_pools()


# --------------------------------------------------------------------------------------------
# Pooler
# --------------------------------------------------------------------------------------------
class Pooler(nn.Module):
    """Pools every RoI of a batch from its feature level.

    Args:
        level_pool: the pooling of every level (a registered POOLER_TYPE's LevelPool, built
            for the same `scales`).
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
        box_tensors = [b.tensor if isinstance(b, Boxes) else b for b in boxes]
        rois = _rois_from_boxes(box_tensors, features[0].device)  # (R, 5) in float32 or wider
        if dtype in _REDUCED_PRECISION and not reduced_input_keeps_rois(features[0]):
            # the ops would round the RoIs: pool in float32, cast back below
            features = [f.float() for f in features]
        if features[0].dtype not in _REDUCED_PRECISION:
            rois = rois.to(features[0].dtype)
        levels = None
        if num_levels > 1:
            levels = assign_fpn_levels(
                rois[:, 1:], self.min_level, self.max_level, self.canonical_scale,
                self.canonical_level,
            )  # fmt: skip
        return self.level_pool(features, rois, levels).to(dtype)


def _rois_from_boxes(boxes: list[Tensor], device: torch.device) -> Tensor:
    """N box tensors ``(R_i, 4)`` -> ``(R, 5)`` (batch_index, x1, y1, x2, y2), float32 or wider."""
    dtype = torch.promote_types(torch.float32, boxes[0].dtype)
    concat = torch.cat([b.to(device, dtype).reshape(-1, 4) for b in boxes], dim=0)
    # as_size, not len(b): a traced size stays symbolic
    batch_index = torch.cat(
        [_filled(as_size(b.shape[0]), i, dtype, device) for i, b in enumerate(boxes)]
    )
    return torch.cat([batch_index[:, None], concat], dim=1)


def _filled(
    size: int | torch.SymInt | Tensor, value: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """torch.full((size,), value), of a size that may be symbolic or traced (a 0-dim tensor,
    which torch.full takes but its stubs do not)."""
    return torch.full((size,), value, dtype=dtype, device=device)  # pyright: ignore[reportCallIssue, reportArgumentType, reportUnknownVariableType]


def build_pooler(head_cfg: PooledHeadConfig, in_channels: int | None = None) -> Pooler:
    """The pooler of a head config (cfg.MODEL.ROI_BOX_HEAD, ROI_MASK_HEAD or ROI_KEYPOINT_HEAD).

    Reads POOLER_TYPE, POOLER_RESOLUTION, POOLER_SCALES, POOLER_SAMPLING_RATIO and DEFORM_GAMMA.
    `in_channels` (channels of the pooled maps) is needed by the deformable types only.
    """
    settings = PoolSettings(
        output_size=head_cfg.POOLER_RESOLUTION,
        sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
        gamma=head_cfg.DEFORM_GAMMA,
        in_channels=in_channels or 0,
    )
    scales = [float(s) for s in head_cfg.POOLER_SCALES]
    level_pool = POOLERS.get(str(head_cfg.POOLER_TYPE))(settings, scales)
    return Pooler(level_pool=level_pool, scales=scales)
