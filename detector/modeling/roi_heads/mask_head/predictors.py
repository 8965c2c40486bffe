"""Mask predictors: mask features -> per-class mask logits (MODEL.ROI_MASK_HEAD.PREDICTOR).

- "MaskRCNNC4Predictor": 2x2 stride-2 transposed conv (`conv5_mask`) -> ReLU -> 1x1 conv
  (`mask_fcn_logits`) to K class logits; doubles the size (14 -> 28 on FPN, 7 -> 14 on C4).
- "MaskRCNNConv1x1Predictor": the 1x1 conv alone (keeps the size).

Both initialize as maskrcnn_benchmark: kaiming normal (fan_out, ReLU) weights, zero biases.
Layer names follow maskrcnn_benchmark, so its checkpoints map one to one.

Both compute with matrix products on channels-last rows instead of calling the convolutions:
a 2x2 transposed conv of stride 2 has no overlapping outputs, so it is one (R H W, C) x (C, 4 D)
product, several times faster on the CPU than the transposed-convolution kernel. Given the class
of every RoI (`classes`), they compute only that class's logits, a (D,) dot product per pixel
instead of K of them: training's loss and inference's masks read no other class (Mask R-CNN's
L_mask), and the 1x1 conv to K = 91 classes costs as much as the transposed conv.

Shapes: R RoIs, C input channels, D = dim_reduced, (H, W) the feature size (S x S in a mask
head), K classes including the background.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.layers import msra_fill
from detector.modeling.registry import Registry

__all__ = ["ROI_MASK_PREDICTORS", "MaskRCNNC4Predictor", "MaskRCNNConv1x1Predictor"]

ROI_MASK_PREDICTORS = Registry("MODEL.ROI_MASK_HEAD.PREDICTOR")


def _init_parameters(module: nn.Module) -> None:
    """msra_fill on every (transposed) convolution, in module order."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            msra_fill(layer)


def _channels_last_rows(x: Tensor) -> Tensor:
    """(R, C, H, W) -> (R, H*W, C): one row of channels per pixel (row-major pixels)."""
    num_rois, channels, height, width = x.shape
    return x.permute(0, 2, 3, 1).reshape(num_rois, height * width, channels)


def _upsample_2x_relu(x: Tensor, conv: nn.ConvTranspose2d) -> Tensor:
    """ReLU(conv(x)) for a 2x2 stride-2 transposed conv, as one matrix product.

    Output pixel (2i + a, 2j + b) is input pixel (i, j) times the kernel tap (a, b), so
    ``(R H W, C) @ (C, 2 * 2 * D)`` gives every output pixel once.

    Args:
        x: Tensor[R, C, H, W].
        conv: ConvTranspose2d(C, D, 2, stride=2), weight (C, D, 2, 2), bias (D,) or None.

    Returns:
        Tensor[R, H, W, 2, 2, D]: element [r, i, j, a, b] is output pixel (2i + a, 2j + b).
    """
    num_rois, channels, height, width = x.shape
    dim = conv.out_channels
    weight = conv.weight.permute(0, 2, 3, 1).reshape(channels, 4 * dim)  # (C, 2*2*D)
    rows = _channels_last_rows(x).reshape(-1, channels)  # (R*S*S, C)
    if conv.bias is None:
        out = rows @ weight
    else:
        out = torch.addmm(conv.bias.repeat(4), rows, weight)  # (R*S*S, 2*2*D)
    return out.relu_().view(num_rois, height, width, 2, 2, dim)


def _pixel_logits(features: Tensor, conv: nn.Conv2d, classes: Tensor | None) -> Tensor:
    """The 1x1 conv `conv` over channels-last pixels, for every class or one class per RoI.

    Args:
        features: Tensor[R, P, D], P pixels of D channels per RoI.
        conv: Conv2d(D, K, 1).
        classes: Tensor[R] int64, or None for all K classes.

    Returns:
        Tensor[R, P, K] (classes None) or Tensor[R, P] (the logits of class classes[r]).
    """
    weight = conv.weight.flatten(1)  # (K, D)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if classes is None:
        return torch.matmul(features, weight.t()) + bias  # (R, P, K)
    classes = classes.to(weight.device)
    selected = weight[classes]  # (R, D)
    logits = torch.bmm(features, selected[:, :, None])[..., 0]  # (R, P)
    return logits + bias[classes][:, None]


def _check_classes(classes: Tensor | None, num_rois: int) -> None:
    if classes is not None and classes.shape != (num_rois,):
        raise ValueError(
            f"mask predictor: `classes` must be Tensor[{num_rois}] (one class per RoI), "
            f"got shape {tuple(classes.shape)}"
        )


class _ClassSelectivePredictor(nn.Module):
    """Base of predictors whose forward takes `classes` (see the module doc)."""

    #: MaskHead passes the RoIs' classes to predictors that have this attribute.
    selects_classes = True
    mask_fcn_logits: nn.Conv2d  # set by the subclasses: one output channel per class (or 1)

    def _select(self, classes: Tensor | None, num_rois: int) -> tuple[Tensor | None, int]:
        """(`classes` checked, or None for a class-agnostic predictor (one output channel);
        the number of logit channels returned: 1 or K)."""
        _check_classes(classes, num_rois)
        num_classes = self.mask_fcn_logits.out_channels
        if num_classes == 1 or classes is None:
            return None, num_classes
        return classes, 1


@ROI_MASK_PREDICTORS.register("MaskRCNNC4Predictor")
class MaskRCNNC4Predictor(_ClassSelectivePredictor):
    """Transposed conv 2x2/2 + ReLU + 1x1 conv: ``(R, C, S, S) -> (R, K, 2S, 2S)`` logits."""

    upsample = 2

    def __init__(self, in_channels: int, *, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)
        _init_parameters(self)

    def forward(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """Logits ``(R, K, 2S, 2S)``, or ``(R, 1, 2S, 2S)`` of class classes[r] for RoI r.

        Args:
            x: Tensor[R, C, S, S] mask features.
            classes: optional Tensor[R] int64 class of each RoI.
        """
        num_rois, _, height, width = x.shape
        classes, channels = self._select(classes, num_rois)
        upsampled = _upsample_2x_relu(x, self.conv5_mask)  # (R, H, W, 2, 2, D)
        pixels = upsampled.view(num_rois, height * width * 4, self.conv5_mask.out_channels)
        logits = _pixel_logits(pixels, self.mask_fcn_logits, classes)  # (R, H*W*2*2[, K])
        logits = logits.view(num_rois, height, width, 2, 2, channels)  # [r, i, j, a, b, k]
        # pixel (2i + a, 2j + b): (R, K, H, 2, W, 2) -> (R, K, 2H, 2W)
        logits = logits.permute(0, 5, 1, 3, 2, 4)
        return logits.reshape(num_rois, channels, 2 * height, 2 * width)


@ROI_MASK_PREDICTORS.register("MaskRCNNConv1x1Predictor")
class MaskRCNNConv1x1Predictor(_ClassSelectivePredictor):
    """A 1x1 conv: ``(R, C, S, S) -> (R, K, S, S)`` logits."""

    upsample = 1

    def __init__(self, in_channels: int, *, dim_reduced: int, num_classes: int) -> None:
        super().__init__()
        del dim_reduced  # no hidden layer
        self.mask_fcn_logits = nn.Conv2d(in_channels, num_classes, 1)
        _init_parameters(self)

    def forward(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """Logits ``(R, K, S, S)``, or ``(R, 1, S, S)`` of class classes[r] for RoI r."""
        num_rois, _, height, width = x.shape
        classes, channels = self._select(classes, num_rois)
        logits = _pixel_logits(_channels_last_rows(x), self.mask_fcn_logits, classes)
        logits = logits.view(num_rois, height, width, channels)  # (R, H, W, K or 1)
        return logits.permute(0, 3, 1, 2).reshape(num_rois, channels, height, width)
