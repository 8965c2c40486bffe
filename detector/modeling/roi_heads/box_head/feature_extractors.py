"""Box feature extractors: pooled RoI features -> per-RoI features for the box predictor.

Shape glossary: R RoIs, C channels of the pooled maps, S = POOLER_RESOLUTION, D = MLP_HEAD_DIM.

Registered in ROI_BOX_FEATURE_EXTRACTORS (MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR); each is built by
``from_config(cfg, in_channels)`` and exposes `out_channels`:

    FPN2MLPFeatureExtractor          (R, C, S, S) -> (R, D)          fc6, fc7 (+ GN, + ReLU)
    FPNXconv1fcFeatureExtractor      (R, C, S, S) -> (R, D)          convs (+ GN), fc6
    ResNet50Conv5ROIFeatureExtractor (R, C, S, S) -> (R, 2048, S/2, S/2)  res5 (C4 detectors)
    VGG16FC67FeatureExtractor        (R, 512, 7, 7) -> (R, D)        VGG-16's fc6, fc7
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detector.config import Config
from detector.layers import Conv2d, get_norm
from detector.modeling.backbone.resnet import build_res5_head
from detector.modeling.registry import ROI_BOX_FEATURE_EXTRACTORS

__all__ = [
    "FPN2MLPFeatureExtractor",
    "FPNXconv1fcFeatureExtractor",
    "ResNet50Conv5ROIFeatureExtractor",
    "VGG16FC67FeatureExtractor",
]


def make_fc(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer with maskrcnn_benchmark's init: kaiming_uniform(a=1), zero bias."""
    fc = nn.Linear(in_features, out_features)
    nn.init.kaiming_uniform_(fc.weight, a=1)
    nn.init.zeros_(fc.bias)
    return fc


def make_fc_gn(in_features: int, out_features: int, groups: int, eps: float) -> nn.Sequential:
    """maskrcnn_benchmark's fc with GroupNorm: Linear without bias (same init), then GroupNorm
    over the `out_features` channels of each ``(R, out_features)`` row."""
    fc = nn.Linear(in_features, out_features, bias=False)
    nn.init.kaiming_uniform_(fc.weight, a=1)
    return nn.Sequential(fc, get_norm("GN", out_features, num_groups=groups, eps=eps))


def gn_groups(cfg: Config, channels: int) -> int:
    """MODEL.GROUP_NORM's group count for `channels` (DIM_PER_GP > 0 wins over NUM_GROUPS)."""
    group_norm = cfg.MODEL.GROUP_NORM
    if group_norm.DIM_PER_GP > 0:
        return channels // group_norm.DIM_PER_GP
    return group_norm.NUM_GROUPS


@ROI_BOX_FEATURE_EXTRACTORS.register("FPN2MLPFeatureExtractor")
class FPN2MLPFeatureExtractor(nn.Module):
    """Two fully connected layers: ``(R, C, S, S) -> flatten -> fc6 -> ReLU -> fc7 -> ReLU``.

    The layers are named as torchvision's TwoMLPHead (fc6, fc7), so its weights load. With
    `use_gn` (maskrcnn_benchmark's ROI_BOX_HEAD.USE_GN) each fc has no bias and is followed by
    GroupNorm (`fc6.0`, `fc6.1`, as maskrcnn_benchmark names them).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        resolution: int,
        hidden_dim: int = 1024,
        use_gn: bool = False,
        gn_groups: int = 32,
        gn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        dims = [(in_channels * resolution * resolution, hidden_dim), (hidden_dim, hidden_dim)]
        fc6, fc7 = (
            make_fc_gn(i, o, gn_groups, gn_eps) if use_gn else make_fc(i, o) for i, o in dims
        )
        self.fc6, self.fc7 = fc6, fc7
        self.out_channels = hidden_dim

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> FPN2MLPFeatureExtractor:
        """Reads MODEL.ROI_BOX_HEAD (POOLER_RESOLUTION, MLP_HEAD_DIM, USE_GN), MODEL.GROUP_NORM."""
        head = cfg.MODEL.ROI_BOX_HEAD
        hidden = head.MLP_HEAD_DIM
        return cls(
            in_channels=in_channels,
            resolution=head.POOLER_RESOLUTION,
            hidden_dim=hidden,
            use_gn=head.USE_GN,
            gn_groups=gn_groups(cfg, hidden),
            gn_eps=cfg.MODEL.GROUP_NORM.EPSILON,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (R, C, S, S) -> (R, C*S*S)
        return F.relu_(self.fc7(F.relu_(self.fc6(x))))  # in place on the fresh FC outputs


@ROI_BOX_FEATURE_EXTRACTORS.register("FPNXconv1fcFeatureExtractor")
class FPNXconv1fcFeatureExtractor(nn.Module):
    """`num_convs` 3x3 convs (GroupNorm when `use_gn`), ReLU after each, then fc6 + ReLU.

    ``(R, C, S, S) -> xconvs -> (R, conv_dim, S, S) -> flatten -> fc6 -> (R, hidden_dim)``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        resolution: int,
        num_convs: int = 4,
        conv_dim: int = 256,
        hidden_dim: int = 1024,
        use_gn: bool = False,
        dilation: int = 1,
        gn_groups: int = 32,
        gn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            conv = Conv2d(
                channels, conv_dim, 3, padding=dilation, dilation=dilation, bias=not use_gn
            )
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            if use_gn:
                layers.append(get_norm("GN", conv_dim, num_groups=gn_groups, eps=gn_eps))
            layers.append(nn.ReLU(inplace=True))
            channels = conv_dim
        self.xconvs = nn.Sequential(*layers)
        self.fc6 = make_fc(channels * resolution * resolution, hidden_dim)
        self.out_channels = hidden_dim

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> FPNXconv1fcFeatureExtractor:
        """Reads MODEL.ROI_BOX_HEAD (NUM_STACKED_CONVS, CONV_HEAD_DIM, MLP_HEAD_DIM, USE_GN,
        DILATION, POOLER_RESOLUTION) and MODEL.GROUP_NORM."""
        head, group_norm = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.GROUP_NORM
        conv_dim = head.CONV_HEAD_DIM
        return cls(
            in_channels=in_channels,
            resolution=head.POOLER_RESOLUTION,
            num_convs=head.NUM_STACKED_CONVS,
            conv_dim=conv_dim,
            hidden_dim=head.MLP_HEAD_DIM,
            use_gn=head.USE_GN,
            dilation=head.DILATION,
            gn_groups=gn_groups(cfg, conv_dim),
            gn_eps=group_norm.EPSILON,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.xconvs(x).flatten(1)  # (R, conv_dim, S, S) -> (R, conv_dim*S*S)
        return F.relu_(self.fc6(x))


@ROI_BOX_FEATURE_EXTRACTORS.register("ResNet50Conv5ROIFeatureExtractor")
class ResNet50Conv5ROIFeatureExtractor(nn.Module):
    """The res5 stage run on pooled RoIs (C4 detectors): ``(R, C, S, S) -> (R, C5, S/2, S/2)``.

    The depth and the block options come from MODEL.BACKBONE.CONV_BODY / MODEL.RESNETS
    (`build_res5_head`), so R-50-C4 gives 2048 channels and R-18-C4 512. The predictor
    average-pools the output.
    """

    def __init__(self, *, head: nn.Module, in_channels: int) -> None:
        super().__init__()
        if head.in_channels != in_channels:
            raise ValueError(
                f"ResNet50Conv5ROIFeatureExtractor: res5 takes {head.in_channels} channels but "
                f"the pooled features have {in_channels}; use a C4 backbone of the same depth "
                "(MODEL.BACKBONE.CONV_BODY)"
            )
        self.head = head
        self.out_channels = head.out_channels

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> ResNet50Conv5ROIFeatureExtractor:
        """Reads MODEL.BACKBONE.CONV_BODY and MODEL.RESNETS through `build_res5_head`."""
        return cls(head=build_res5_head(cfg), in_channels=in_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


@ROI_BOX_FEATURE_EXTRACTORS.register("VGG16FC67FeatureExtractor")
class VGG16FC67FeatureExtractor(nn.Module):
    """VGG-16's fc6 and fc7 with their ReLUs and WITHOUT dropout (simple-faster-rcnn's head).

    ``(R, 512, 7, 7) -> flatten -> fc6 -> ReLU -> fc7 -> ReLU -> (R, hidden_dim)``. The layers
    sit in `classifier` at torchvision's indices (0 fc6, 1 ReLU, 2 identity where torchvision has
    Dropout, 3 fc7, 4 ReLU), so ``vgg16().classifier[:5]`` weights load key for key
    (classifier.0.*, classifier.3.*) when hidden_dim is 4096 and the pooled size 7.
    """

    def __init__(self, *, in_channels: int, resolution: int, hidden_dim: int = 4096) -> None:
        super().__init__()
        fc6 = nn.Linear(in_channels * resolution * resolution, hidden_dim)
        fc7 = nn.Linear(hidden_dim, hidden_dim)
        self.classifier = nn.Sequential(
            fc6,
            nn.ReLU(inplace=True),
            nn.Identity(),  # torchvision's Dropout
            fc7,
            nn.ReLU(inplace=True),
        )
        for fc in (fc6, fc7):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)
        self.out_channels = hidden_dim

    @classmethod
    def from_config(cls, cfg: Config, in_channels: int) -> VGG16FC67FeatureExtractor:
        """Reads MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION and MLP_HEAD_DIM (4096 for VGG-16)."""
        head = cfg.MODEL.ROI_BOX_HEAD
        return cls(
            in_channels=in_channels,
            resolution=head.POOLER_RESOLUTION,
            hidden_dim=head.MLP_HEAD_DIM,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x.flatten(1))  # (R, 512, 7, 7) -> (R, 25088) -> (R, D)


def build_box_feature_extractor(cfg: Config, in_channels: int) -> nn.Module:
    """The extractor named by MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR for `in_channels` inputs."""
    extractor = ROI_BOX_FEATURE_EXTRACTORS.get(str(cfg.MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR))
    return extractor.from_config(cfg, in_channels)
