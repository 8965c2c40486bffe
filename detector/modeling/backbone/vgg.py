"""VGG-16 conv body of simple-faster-rcnn: conv1_1..conv5_3 with ReLUs, no pool5.

Returns {"c4": conv5_3 features} at stride 16 with 512 channels (named "c4" as the single
stride-16 map that C4 detectors use). `features` holds the same layers, at the same indices, as
torchvision's ``vgg16().features[:30]``, so its weights load key for key.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from detector.config import Config
from detector.layers import Conv2d, msra_fill
from detector.modeling.registry import BACKBONES

# Output channels of the 13 convs, "M" a 2x2/2 max pool (torchvision's configuration "D").
VGG16_LAYERS: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


class VGG16(nn.Module):
    """The VGG-16 conv body.

    Args:
        freeze_at: the number of conv blocks whose weights stay fixed: 0 none, 2 conv1_x and
            conv2_x (simple-faster-rcnn's choice, MODEL.BACKBONE.FREEZE_CONV_BODY_AT), up to 5.

    Forward: ``(N, 3, H, W) -> {"c4": (N, 512, H/16, W/16)}``.
    """

    out_features = ["c4"]
    out_strides = {"c4": 16}
    out_channels = 512

    def __init__(self, *, freeze_at: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            conv = Conv2d(in_channels, int(spec), kernel_size=3, padding=1)
            msra_fill(conv)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.feature_channels = {"c4": 512}
        self.feature_strides = dict(self.out_strides)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stops gradients to the convs of the first `freeze_at` blocks (a block ends at a pool)."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"VGG16: FREEZE_CONV_BODY_AT must be in 0..5, got {freeze_at}")
        block = 0
        for layer in self.features:
            if block >= freeze_at:
                break
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
            if isinstance(layer, nn.MaxPool2d):
                block += 1

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(c4=self.features(x))


@BACKBONES.register("VGG-16")
def build_vgg16_backbone(cfg: Config) -> VGG16:
    """Reads MODEL.BACKBONE.FREEZE_CONV_BODY_AT."""
    return VGG16(freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT)
