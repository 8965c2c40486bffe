"""ResNet / ResNeXt bodies, and the res5 head that C4 detectors run on pooled RoIs.

Feature names and strides of `ResNet` (with MODEL.RESNETS.RES5_DILATION 1):

    "c2": res2, stride 4    "c3": res3, stride 8    "c4": res4, stride 16    "c5": res5, stride 32

A C4 backbone returns {"c4"} only; its res5 stage lives in `ResNetHead` (the box head's feature
extractor). Module names follow torchvision (`layer1`..`layer4`, `conv1`, `bn1`, `downsample`),
with the stem's conv and norm under `stem`, and a deformable 3x3 conv as `conv2.conv` plus its
offset predictor `conv2.offset` (as maskrcnn_benchmark's DFConv2d).

Shape glossary: N images, C channels, H x W the input size; R RoIs and S the pooled size in the
head. The deformable conv's offsets have 2*G*9 channels (G deformable groups, a 3x3 kernel); the
modulated version adds G*9 mask channels.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from detector.config import Config
from detector.config.defaults import ConvInit
from detector.layers import Conv2d, DeformConv2d, FrozenBatchNorm2d, get_norm, msra_fill
from detector.layers.norm import NormFactory, norm_factory
from detector.modeling.registry import BACKBONES

logger = logging.getLogger(__name__)

STAGE_NAMES = ("c2", "c3", "c4", "c5")


def _init_conv(conv: nn.Conv2d, fill: str = ConvInit.XavierFill) -> None:
    """Fills a trunk convolution: XavierFill (maskrcnn_benchmark's, std 1/sqrt(fan_in)) or
    MSRAFill (torchvision's and detectron2's, std sqrt(2/fan_out)); biases start at zero."""
    if fill == ConvInit.MSRAFill:
        msra_fill(conv)
        return
    if fill != ConvInit.XavierFill:
        raise ValueError(f"MODEL.RESNETS.CONV_INIT '{fill}': choose XavierFill or MSRAFill")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def refill_convs(trunk: nn.Module, fill: str) -> None:
    """Re-fills every convolution of `trunk` with `fill` (see `_init_conv`), except the
    zero-initialized offset predictors of deformable convolutions."""
    offsets = {id(m.offset) for m in trunk.modules() if isinstance(m, DFConv2d)}
    for module in trunk.modules():
        if isinstance(module, nn.Conv2d) and id(module) not in offsets:
            _init_conv(module, fill)


class DFConv2d(nn.Module):
    """A deformable convolution (DCN v1, or v2 when `modulated`) with its offset predictor.

    The offsets (and the modulation mask, through a sigmoid) come from a plain convolution
    `offset` with the same kernel, stride, padding and dilation, initialized to zero: untrained,
    a DCN v1 equals the plain convolution and a DCN v2 equals half of it (mask 0.5, as in the
    DCN v2 paper).

    Shapes: input ``(N, C_in, H, W)``; offset ``(N, 2*G*k*k, H', W')``; mask ``(N, G*k*k, H', W')``;
    output ``(N, C_out, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        modulated: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.modulated = modulated
        padding = dilation * (kernel_size - 1) // 2
        self.num_offset_channels = deformable_groups * 2 * kernel_size * kernel_size
        num_mask_channels = deformable_groups * kernel_size * kernel_size if modulated else 0
        self.offset = nn.Conv2d(
            in_channels,
            self.num_offset_channels + num_mask_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        nn.init.zeros_(self.offset.weight)
        if self.offset.bias is not None:
            nn.init.zeros_(self.offset.bias)
        self.conv = DeformConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    @property
    def weight(self) -> Tensor:
        return self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        offset = self.offset(x)
        if not self.modulated:
            return self.conv(x, offset)
        # (N, G*3*k*k, H', W') -> offsets (N, 2*G*k*k, H', W') and mask (N, G*k*k, H', W')
        mask = offset[:, self.num_offset_channels :].sigmoid()
        return self.conv(x, offset[:, : self.num_offset_channels], mask)


def _conv3x3(
    in_channels: int,
    out_channels: int,
    *,
    stride: int,
    dilation: int,
    groups: int,
    with_dcn: bool,
    with_modulated_dcn: bool,
    deformable_groups: int,
) -> nn.Module:
    """A bias-free 3x3 convolution, deformable when `with_dcn`."""
    if with_dcn:
        return DFConv2d(
            in_channels,
            out_channels,
            stride=stride,
            dilation=dilation,
            groups=groups,
            deformable_groups=deformable_groups,
            modulated=with_modulated_dcn,
        )
    conv = Conv2d(
        in_channels,
        out_channels,
        3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        bias=False,
    )
    _init_conv(conv)
    return conv


def _downsample(
    in_channels: int, out_channels: int, stride: int, norm: NormFactory
) -> nn.Sequential | None:
    """The 1x1 projection shortcut, or None when the identity fits."""
    if in_channels == out_channels and stride == 1:
        return None
    conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    _init_conv(conv)
    return nn.Sequential(conv, norm(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34). `conv2` is deformable when `with_dcn`.

    Shapes: ``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        num_groups: int = 1,
        stride_in_1x1: bool = False,
        norm: NormFactory = FrozenBatchNorm2d,
        with_dcn: bool = False,
        with_modulated_dcn: bool = False,
        deformable_groups: int = 1,
    ) -> None:
        super().__init__()
        del bottleneck_channels, stride_in_1x1  # a basic block has no 1x1 convolution
        if num_groups != 1:
            raise ValueError("BasicBlock (ResNet-18/34) supports only MODEL.RESNETS.NUM_GROUPS 1")
        if dilation > 1:
            stride = 1
        self.conv1 = _conv3x3(
            in_channels,
            out_channels,
            stride=stride,
            dilation=dilation,
            groups=1,
            with_dcn=False,
            with_modulated_dcn=False,
            deformable_groups=1,
        )
        self.bn1 = norm(out_channels)
        self.conv2 = _conv3x3(
            out_channels,
            out_channels,
            stride=1,
            dilation=dilation,
            groups=1,
            with_dcn=with_dcn,
            with_modulated_dcn=with_modulated_dcn,
            deformable_groups=deformable_groups,
        )
        self.bn2 = norm(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        # In place on fresh outputs (as torchvision): neither a norm's nor an add's backward
        # needs its output, and ReLU's needs only its own output.
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu_(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt, deformable when `with_dcn`) -> 1x1, and a shortcut.

    The stride sits in the first 1x1 conv when `stride_in_1x1` (MSRA/Caffe2 weights,
    maskrcnn_benchmark's default) and in the 3x3 conv otherwise (torchvision's weights). With
    `dilation` > 1 the block keeps its input resolution (stride 1), as maskrcnn_benchmark.

    Shapes: ``(N, C_in, H, W) -> (N, C_out, H/stride, W/stride)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        dilation: int = 1,
        num_groups: int = 1,
        stride_in_1x1: bool = True,
        norm: NormFactory = FrozenBatchNorm2d,
        with_dcn: bool = False,
        with_modulated_dcn: bool = False,
        deformable_groups: int = 1,
    ) -> None:
        super().__init__()
        if dilation > 1:
            stride = 1
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False)
        _init_conv(self.conv1)
        self.bn1 = norm(bottleneck_channels)
        self.conv2 = _conv3x3(
            bottleneck_channels,
            bottleneck_channels,
            stride=stride_3x3,
            dilation=dilation,
            groups=num_groups,
            with_dcn=with_dcn,
            with_modulated_dcn=with_modulated_dcn,
            deformable_groups=deformable_groups,
        )
        self.bn2 = norm(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        _init_conv(self.conv3)
        self.bn3 = norm(out_channels)
        self.downsample = _downsample(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        # In place on fresh outputs, as BasicBlock.forward.
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu_(out)


# depth -> (block class, number of blocks in res2..res5)
RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _resnet_spec(depth: int) -> tuple[type[nn.Module], tuple[int, int, int, int]]:
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth {depth} is not one of {sorted(RESNET_SPECS)}")
    return RESNET_SPECS[depth]


def _stage_channels(
    block: type[nn.Module],
    stage: int,
    *,
    num_groups: int,
    width_per_group: int,
    res2_out_channels: int,
) -> tuple[int, int]:
    """(bottleneck channels, output channels) of stage `stage` (0 = res2 .. 3 = res5).

    Both double at every stage. A basic block has no bottleneck: its width is
    ``num_groups * width_per_group`` (64 for ResNet-18/34) and RES2_OUT_CHANNELS is not used.
    """
    factor = 2**stage
    bottleneck_channels = num_groups * width_per_group * factor
    if block is BasicBlock:
        return bottleneck_channels, bottleneck_channels
    return bottleneck_channels, res2_out_channels * factor


def make_stage(
    block: type[nn.Module],
    num_blocks: int,
    in_channels: int,
    out_channels: int,
    *,
    first_stride: int,
    **block_kwargs: Any,
) -> nn.Sequential:
    """`num_blocks` blocks; the first one strides by `first_stride` and changes the channels."""
    blocks: list[nn.Module] = []
    for index in range(num_blocks):
        stride = first_stride if index == 0 else 1
        blocks.append(block(in_channels, out_channels, stride=stride, **block_kwargs))
        in_channels = out_channels
    return nn.Sequential(*blocks)


class BasicStem(nn.Module):
    """7x7/2 convolution, norm, ReLU, 3x3/2 max pool: ``(N, 3, H, W) -> (N, C, H/4, W/4)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        _init_conv(self.conv1)
        self.bn1 = norm(out_channels)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _freeze(module: nn.Module) -> nn.Module:
    """Stops gradients to `module` and freezes its batch norms; returns the converted module."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class ResNet(nn.Module):
    """A ResNet/ResNeXt body: stem and the stages up to the last of `out_features`.

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        out_features: which of "c2".."c5" to return, in this order.
        num_groups, width_per_group: ResNeXt cardinality and width (1 and 64 for ResNet;
            32 and 8 for ResNeXt-101-32x8d). The res2 bottleneck has their product as channels.
        stride_in_1x1: stride in the bottlenecks' 1x1 (MSRA weights) or 3x3 (torchvision weights).
        norm: "FrozenBN", "BN", "SyncBN", "GN" or a ``channels -> nn.Module`` factory.
        stem_out_channels, res2_out_channels: channels of the stem and of res2's output.
        res5_dilation: 1, or 2 to keep res5 at stride 16 with dilated 3x3 convs.
        stage_with_dcn: for res2..res5, whether the 3x3 convs are deformable.
        with_modulated_dcn, deformable_groups: DCN v2 and the number of offset groups.
        freeze_at: 0 trains everything; 1 freezes the stem; k freezes the stem and res2..res{k}.
        conv_init: the convolutions' fill, "XavierFill" or "MSRAFill" (MODEL.RESNETS.CONV_INIT).

    Forward: images ``(N, 3, H, W)`` -> OrderedDict name -> ``(N, C_name, H/s, W/s)`` with the
    channels of `feature_channels` and the strides s of `feature_strides`.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        out_features: Sequence[str] = STAGE_NAMES,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        norm: str | NormFactory = "FrozenBN",
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        res5_dilation: int = 1,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        with_modulated_dcn: bool = False,
        deformable_groups: int = 1,
        freeze_at: int = 2,
        conv_init: str = ConvInit.XavierFill,
    ) -> None:
        super().__init__()
        unknown = [name for name in out_features if name not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)}: choose among {STAGE_NAMES}")
        if len(stage_with_dcn) != 4:
            raise ValueError("stage_with_dcn needs 4 booleans, for res2..res5")
        block, blocks_per_stage = _resnet_spec(depth)
        norm = norm_factory(norm)
        self.out_features = list(out_features)
        self.stem = BasicStem(3, stem_out_channels, norm=norm)
        self.feature_channels: dict[str, int] = {}
        self.feature_strides: dict[str, int] = {}
        num_stages = max(STAGE_NAMES.index(name) for name in out_features) + 1
        in_channels, stride = stem_out_channels, 4
        for stage in range(num_stages):
            bottleneck_channels, out_channels = _stage_channels(
                block,
                stage,
                num_groups=num_groups,
                width_per_group=width_per_group,
                res2_out_channels=res2_out_channels,
            )
            dilation = res5_dilation if stage == 3 else 1
            first_stride = 1 if stage == 0 or dilation > 1 else 2
            layer = make_stage(
                block,
                blocks_per_stage[stage],
                in_channels,
                out_channels,
                first_stride=first_stride,
                bottleneck_channels=bottleneck_channels,
                dilation=dilation,
                num_groups=num_groups,
                stride_in_1x1=stride_in_1x1,
                norm=norm,
                with_dcn=bool(stage_with_dcn[stage]),
                with_modulated_dcn=with_modulated_dcn,
                deformable_groups=deformable_groups,
            )
            self.add_module(f"layer{stage + 1}", layer)
            stride *= first_stride
            self.feature_channels[STAGE_NAMES[stage]] = out_channels
            self.feature_strides[STAGE_NAMES[stage]] = stride
            in_channels = out_channels
        self.num_stages = num_stages
        self.out_channels = self.feature_channels[self.out_features[-1]]
        self.out_strides = {name: self.feature_strides[name] for name in self.out_features}
        if conv_init != ConvInit.XavierFill:  # the blocks were built with XavierFill
            refill_convs(self, conv_init)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freezes the stem (freeze_at >= 1) and res2..res{freeze_at} (MODEL.BACKBONE
        .FREEZE_CONV_BODY_AT); their batch norms become FrozenBatchNorm2d."""
        if freeze_at >= 1:
            self.stem = _freeze(self.stem)
        for stage in range(1, min(freeze_at, self.num_stages + 1)):
            name = f"layer{stage}"
            self.add_module(name, _freeze(getattr(self, name)))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        features: OrderedDict[str, Tensor] = OrderedDict()
        for stage in range(self.num_stages):
            x = getattr(self, f"layer{stage + 1}")(x)
            name = STAGE_NAMES[stage]
            if name in self.out_features:
                features[name] = x
        return features


class ResNetHead(nn.Module):
    """The res5 stage of a C4 detector, run on pooled RoI features (its `layer4`).

    Args: as `ResNet`'s, for res5; `stride` is the first block's stride (2: 14x14 -> 7x7 RoIs)
    and `dilation` (RES5_DILATION) > 1 replaces it by dilated convs.

    Forward: ``(R, C_in, S, S) -> (R, out_channels, S/stride, S/stride)``.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        num_groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = True,
        norm: str | NormFactory = "FrozenBN",
        res2_out_channels: int = 256,
        stride: int = 2,
        dilation: int = 1,
        with_dcn: bool = False,
        with_modulated_dcn: bool = False,
        deformable_groups: int = 1,
        conv_init: str = ConvInit.XavierFill,
    ) -> None:
        super().__init__()
        block, blocks_per_stage = _resnet_spec(depth)
        norm = norm_factory(norm)
        channels = {
            "num_groups": num_groups,
            "width_per_group": width_per_group,
            "res2_out_channels": res2_out_channels,
        }
        _, self.in_channels = _stage_channels(block, 2, **channels)
        bottleneck_channels, self.out_channels = _stage_channels(block, 3, **channels)
        self.layer4 = make_stage(
            block,
            blocks_per_stage[3],
            self.in_channels,
            self.out_channels,
            first_stride=stride if dilation == 1 else 1,
            bottleneck_channels=bottleneck_channels,
            dilation=dilation,
            num_groups=num_groups,
            stride_in_1x1=stride_in_1x1,
            norm=norm,
            with_dcn=with_dcn,
            with_modulated_dcn=with_modulated_dcn,
            deformable_groups=deformable_groups,
        )
        if conv_init != ConvInit.XavierFill:  # the blocks were built with XavierFill
            refill_convs(self, conv_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x)


# ---------------------------------------------------------------------------------------------
# Builders: config -> keyword arguments
# ---------------------------------------------------------------------------------------------

_CONV_BODY = re.compile(r"^(?P<kind>[RX])-(?P<depth>\d+)(?:-(?P<groups>\d+)x(?P<width>\d+)d)?-")


def _get(node: Any, key: str, default: Any) -> Any:
    """`node.key`, or `default` where the config schema has no such key."""
    return node[key] if key in node else default


def parse_conv_body(conv_body: str, cfg: Config) -> dict[str, int]:
    """Depth, groups and width of a MODEL.BACKBONE.CONV_BODY such as "R-50-FPN" or
    "X-101-32x8d-FPN". ResNeXt names fix the cardinality and width; ResNet names take
    MODEL.RESNETS.NUM_GROUPS / WIDTH_PER_GROUP."""
    match = _CONV_BODY.match(conv_body)
    if match is None:
        raise ValueError(f"MODEL.BACKBONE.CONV_BODY '{conv_body}' is not a ResNet/ResNeXt name")
    num_groups = cfg.MODEL.RESNETS.NUM_GROUPS
    width_per_group = cfg.MODEL.RESNETS.WIDTH_PER_GROUP
    if match["groups"] is not None:
        named = (int(match["groups"]), int(match["width"]))
        if (num_groups, width_per_group) not in ((1, 64), named):
            raise ValueError(
                f"MODEL.BACKBONE.CONV_BODY '{conv_body}' needs MODEL.RESNETS.NUM_GROUPS "
                f"{named[0]} and WIDTH_PER_GROUP {named[1]}, got {num_groups} and "
                f"{width_per_group}"
            )
        num_groups, width_per_group = named
    return {
        "depth": int(match["depth"]),
        "num_groups": num_groups,
        "width_per_group": width_per_group,
    }


def resnet_kwargs_from_config(cfg: Config) -> dict[str, Any]:
    """The keyword arguments of `ResNet` that MODEL.RESNETS and MODEL.BACKBONE give."""
    resnets = cfg.MODEL.RESNETS
    kwargs: dict[str, Any] = parse_conv_body(cfg.MODEL.BACKBONE.CONV_BODY, cfg)
    kwargs.update(
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        norm=norm_from_config(cfg, resnets.NORM),
        stem_out_channels=int(_get(resnets, "STEM_OUT_CHANNELS", 64)),
        res2_out_channels=resnets.RES2_OUT_CHANNELS,
        res5_dilation=resnets.RES5_DILATION,
        stage_with_dcn=tuple(bool(v) for v in resnets.STAGE_WITH_DCN),
        with_modulated_dcn=resnets.WITH_MODULATED_DCN,
        deformable_groups=resnets.DEFORMABLE_GROUPS,
        conv_init=str(_get(resnets, "CONV_INIT", ConvInit.XavierFill)),
    )
    return kwargs


def norm_from_config(cfg: Config, name: str) -> str | NormFactory:
    """A norm name, or for "GN" a factory with MODEL.GROUP_NORM's groups and epsilon."""
    if name != "GN":
        return str(name)
    group_norm = cfg.MODEL.GROUP_NORM
    num_groups, eps = group_norm.NUM_GROUPS, group_norm.EPSILON
    return lambda channels: get_norm("GN", channels, num_groups=num_groups, eps=eps)


@BACKBONES.register("R-18-C4", "R-34-C4", "R-50-C4", "R-101-C4", "R-152-C4", "X-101-32x8d-C4")
def build_resnet_c4_backbone(cfg: Config) -> ResNet:
    """A ResNet body up to res4: {"c4": stride 16}."""
    return ResNet(
        out_features=("c4",),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        **resnet_kwargs_from_config(cfg),
    )


@BACKBONES.register("R-50-C5", "R-101-C5")
def build_resnet_c5_backbone(cfg: Config) -> ResNet:
    """A ResNet body up to res5: {"c5": stride 32 (16 with RES5_DILATION 2)}."""
    return ResNet(
        out_features=("c5",),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
        **resnet_kwargs_from_config(cfg),
    )


def build_res5_head(cfg: Config, *, stride: int = 2) -> ResNetHead:
    """The res5 head of a C4 detector (MODEL.BACKBONE.CONV_BODY names the depth)."""
    kwargs = resnet_kwargs_from_config(cfg)
    with_dcn = kwargs.pop("stage_with_dcn")[3]
    dilation = kwargs.pop("res5_dilation")
    kwargs.pop("stem_out_channels")
    return ResNetHead(stride=stride, dilation=dilation, with_dcn=with_dcn, **kwargs)


__all__ = [
    "BasicBlock",
    "BasicStem",
    "Bottleneck",
    "DFConv2d",
    "ResNet",
    "ResNetHead",
    "build_res5_head",
    "build_resnet_c4_backbone",
    "build_resnet_c5_backbone",
    "make_stage",
    "parse_conv_body",
    "refill_convs",
    "resnet_kwargs_from_config",
]
