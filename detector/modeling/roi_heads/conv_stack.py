"""The stack of 3x3 convolutions that the FPN mask head and the keypoint head run on pooled RoIs.

Shapes: R RoIs, S the pooled side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from detector.layers import Conv2d, msra_fill

__all__ = ["HeadConvStack"]


class HeadConvStack(nn.Module):
    """3x3 convolutions, each followed by a norm (when `norm` is given) and ReLU; the size is kept.

    Layers are named `<prefix>1`, `<prefix>2`, ... (maskrcnn_benchmark's `mask_fcn` and
    `conv_fcn`), each a Conv2d, or a Sequential(conv, norm) with a norm, so maskrcnn_benchmark's
    and detectron2's checkpoints map one to one.

    Args:
        in_channels: channels of the pooled features.
        conv_layers: the output channels of each convolution (at least one).
        prefix: the layers' name stem.
        key: the config key of `conv_layers`, for the error message.
        dilation: of every convolution (the padding keeps the size).
        norm: builds the norm for a width, or None (then the convolutions have a bias).

    Shapes: ``(R, in_channels, S, S) -> (R, conv_layers[-1], S, S)``.
    """

    def __init__(
        self,
        in_channels: int,
        conv_layers: Sequence[int],
        *,
        prefix: str,
        key: str,
        dilation: int = 1,
        norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if len(conv_layers) == 0:
            raise ValueError(f"{key} must list at least one conv width")
        self.layer_names: list[str] = []
        channels = in_channels
        for index, width in enumerate(conv_layers, start=1):
            has_bias = norm is None  # a norm's shift replaces the bias
            conv = Conv2d(channels, width, 3, padding=dilation, dilation=dilation, bias=has_bias)
            msra_fill(conv)
            layer: nn.Module = conv if norm is None else nn.Sequential(conv, norm(width))
            name = f"{prefix}{index}"
            self.add_module(name, layer)
            self.layer_names.append(name)
            channels = width
        self.out_channels = channels

    def output_resolution(self, pooled_resolution: int) -> int:
        """Side of the output for a pooled side (the convs keep it)."""
        return pooled_resolution

    def forward(self, x: Tensor) -> Tensor:
        for name in self.layer_names:
            x = F.relu_(getattr(self, name)(x))  # in place on the fresh conv (or norm) output
        return x
