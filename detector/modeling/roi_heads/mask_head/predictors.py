"""Mask predictors: mask features -> per-class mask logits (MODEL.ROI_MASK_HEAD.PREDICTOR).

- "MaskRCNNC4Predictor": 2x2 stride-2 transposed conv (`conv5_mask`) -> ReLU -> 1x1 conv
  (`mask_fcn_logits`) to K class logits; doubles the size (14 -> 28 on FPN, 7 -> 14 on C4).
- "MaskRCNNConv1x1Predictor": the 1x1 conv alone (keeps the size).

Both initialize as maskrcnn_benchmark: kaiming normal (fan_out, ReLU) weights, zero biases.
Layer names follow maskrcnn_benchmark, so its checkpoints map one to one.

Shapes: R RoIs, C channels, S the feature side, K classes including the background.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from detector.modeling.registry import Registry

__all__ = ["ROI_MASK_PREDICTORS", "MaskRCNNC4Predictor", "MaskRCNNConv1x1Predictor"]

ROI_MASK_PREDICTORS = Registry("MODEL.ROI_MASK_HEAD.PREDICTOR")


def _init_parameters(module: nn.Module) -> None:
    for name, parameter in module.named_parameters():
        if "bias" in name:
            nn.init.zeros_(parameter)
        else:
            nn.init.kaiming_normal_(parameter, mode="fan_out", nonlinearity="relu")


@ROI_MASK_PREDICTORS.register("MaskRCNNC4Predictor")
class MaskRCNNC4Predictor(nn.Module):
    """Transposed conv 2x2/2 + ReLU + 1x1 conv: ``(R, C, S, S) -> (R, K, 2S, 2S)`` logits."""

    upsample = 2

    def __init__(self, in_channels: int, *, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)
        _init_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


@ROI_MASK_PREDICTORS.register("MaskRCNNConv1x1Predictor")
class MaskRCNNConv1x1Predictor(nn.Module):
    """A 1x1 conv: ``(R, C, S, S) -> (R, K, S, S)`` logits."""

    upsample = 1

    def __init__(self, in_channels: int, *, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        del dim_reduced  # no hidden layer
        self.mask_fcn_logits = nn.Conv2d(in_channels, num_classes, 1)
        _init_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask_fcn_logits(x)
