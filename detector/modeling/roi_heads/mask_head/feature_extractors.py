"""Mask head feature extractors: pooled RoI features -> mask features (MODEL.ROI_MASK_HEAD).

Registered in `ROI_MASK_HEADS` under MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR names, each as a
builder ``(cfg, in_channels) -> extractor``:

- "MaskRCNNFPNFeatureExtractor": a stack of 3x3 convs + ReLU (CONV_LAYERS channels, DILATION,
  GroupNorm with USE_GN), which keeps the pooled size (Mask R-CNN's FPN head, 4 x 256).
- "ResNet50Conv5ROIFeatureExtractor": the res5 stage of a C4 ResNet (stride 2: 14x14 -> 7x7).
  With MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR the mask head reuses the box head's res5
  instead (see `build_mask_head`).

Every extractor has `out_channels` and `output_resolution(pooled_resolution)`.

Shapes: R RoIs, C channels, S the pooled side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from detector.config import Config
from detector.layers import get_norm
from detector.modeling.registry import ROI_MASK_HEADS
from detector.modeling.roi_heads.conv_stack import HeadConvStack

__all__ = [
    "MaskRCNNC4FeatureExtractor",
    "MaskRCNNFPNFeatureExtractor",
    "build_c4_mask_feature_extractor",
    "build_fpn_mask_feature_extractor",
]


class MaskRCNNFPNFeatureExtractor(HeadConvStack):
    """3x3 convolutions, each followed by GroupNorm (optional) and ReLU; the size is kept.

    Layers are named `mask_fcn1`, `mask_fcn2`, ... as in maskrcnn_benchmark (with GroupNorm each
    is a Sequential(conv, norm)), so its checkpoints map one to one.

    Shapes: ``(R, in_channels, S, S) -> (R, conv_layers[-1], S, S)``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        conv_layers: Sequence[int] = (256, 256, 256, 256),
        dilation: int = 1,
        use_gn: bool = False,
        gn_num_groups: int = 32,
        gn_dim_per_group: int = -1,
        gn_eps: float = 1e-5,
    ) -> None:
        def group_norm(width: int) -> nn.Module:
            groups = width // gn_dim_per_group if gn_dim_per_group > 0 else gn_num_groups
            return get_norm("GN", width, num_groups=groups, eps=gn_eps)

        super().__init__(
            in_channels,
            conv_layers,
            prefix="mask_fcn",
            key="MODEL.ROI_MASK_HEAD.CONV_LAYERS",
            dilation=dilation,
            norm=group_norm if use_gn else None,
        )


class MaskRCNNC4FeatureExtractor(nn.Module):
    """A res5 stage run on pooled RoI features (Mask R-CNN's C4 head), held as `head`.

    Args:
        head: a module ``(R, C, S, S) -> (R, out_channels, ceil(S / stride), ceil(S / stride))``,
            e.g. `detector.modeling.backbone.resnet.ResNetHead`, possibly the box head's own.
        out_channels: its output channels.
        stride: its spatial stride (2, or 1 with a dilated res5).

    The module is `head` as in maskrcnn_benchmark's ResNet50Conv5ROIFeatureExtractor, so the
    parameters are named `head.layer4.*` there and here.
    """

    def __init__(self, head: nn.Module, *, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.head = head
        self.out_channels = out_channels
        self.stride = stride

    def output_resolution(self, pooled_resolution: int) -> int:
        """Side of the output for a pooled side: ceil(S / stride)."""
        return -(-pooled_resolution // self.stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


def _gn_kwargs(cfg: Config) -> dict[str, Any]:
    group_norm = cfg.MODEL.GROUP_NORM
    return {
        "gn_num_groups": group_norm.NUM_GROUPS,
        "gn_dim_per_group": group_norm.DIM_PER_GP,
        "gn_eps": group_norm.EPSILON,
    }


@ROI_MASK_HEADS.register("MaskRCNNFPNFeatureExtractor")
def build_fpn_mask_feature_extractor(cfg: Config, in_channels: int) -> MaskRCNNFPNFeatureExtractor:
    """The FPN mask head's convs from MODEL.ROI_MASK_HEAD (CONV_LAYERS, DILATION, USE_GN)."""
    head_cfg = cfg.MODEL.ROI_MASK_HEAD
    return MaskRCNNFPNFeatureExtractor(
        in_channels,
        conv_layers=[int(c) for c in head_cfg.CONV_LAYERS],
        dilation=head_cfg.DILATION,
        use_gn=head_cfg.USE_GN,
        **_gn_kwargs(cfg),
    )


def res5_stride(cfg: Config) -> int:
    """The res5 head's stride on pooled RoIs: 2, or 1 with MODEL.RESNETS.RES5_DILATION > 1."""
    return 1 if cfg.MODEL.RESNETS.RES5_DILATION > 1 else 2


@ROI_MASK_HEADS.register("ResNet50Conv5ROIFeatureExtractor")
def build_c4_mask_feature_extractor(cfg: Config, in_channels: int) -> MaskRCNNC4FeatureExtractor:
    """The mask head's own res5 stage (MODEL.BACKBONE.CONV_BODY and MODEL.RESNETS)."""
    from detector.modeling.backbone.resnet import build_res5_head

    head = build_res5_head(cfg)
    if head.in_channels != in_channels:
        raise ValueError(
            f"MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR 'ResNet50Conv5ROIFeatureExtractor': res5 of "
            f"MODEL.BACKBONE.CONV_BODY '{cfg.MODEL.BACKBONE.CONV_BODY}' takes {head.in_channels} "
            f"channels but the features have {in_channels}"
        )
    return MaskRCNNC4FeatureExtractor(head, out_channels=head.out_channels, stride=res5_stride(cfg))
