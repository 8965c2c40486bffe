"""RPN head: a shared 3x3 conv, then 1x1 convs for objectness and box deltas on every level.

Shapes:
    N: images, C: feature channels, A: anchors per location, H x W: a level's size.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from detector.layers import Conv2d
from detector.modeling.registry import RPN_HEADS


@RPN_HEADS.register("SingleConvRPNHead")
class RPNHead(nn.Module):
    """3x3 conv + ReLU, then objectness logits (A per location) and deltas (4A per location)."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0.0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Returns per level objectness (N, A, H, W) and deltas (N, A*4, H, W)."""
        logits: list[Tensor] = []
        deltas: list[Tensor] = []
        for feature in features:
            hidden = F.relu_(self.conv(feature))
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas
