"""DeformConv2d: a convolution layer whose sampling grid is shifted by per-position offsets."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init
from torch.nn.modules.utils import _pair as _torch_pair  # pyright: ignore[reportPrivateUsage, reportUnknownVariableType]

from detector.ops.deform_conv import deform_conv2d

torch.fx.wrap("deform_conv2d")  # a leaf of FX graphs traced through this module


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """An int as (value, value), a pair as a tuple: nn.Conv2d's `_pair`, typed."""
    return _torch_pair(value)  # pyright: ignore[reportUnknownVariableType]


class DeformConv2d(nn.Module):
    """Deformable convolution layer (DCN v1, or v2 when `forward` gets a mask).

    Same arguments and parameter initialization as torchvision.ops.DeformConv2d. The offsets
    (and mask) come from the caller, usually a plain conv on the same input; with zero offsets
    and a mask of ones the layer equals nn.Conv2d.

    Args:
        in_channels: C, channels of the input.
        out_channels: O, channels of the output.
        kernel_size: int or (kh, kw).
        stride, padding, dilation: int or (h, w) pairs.
        groups: weight groups; must divide `in_channels` and `out_channels`.
        bias: whether the layer has an (O,) bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if groups <= 0 or in_channels % groups != 0:
            raise ValueError(
                f"DeformConv2d: in_channels={in_channels} must be divisible by groups={groups}"
            )
        if out_channels % groups != 0:
            raise ValueError(
                f"DeformConv2d: out_channels={out_channels} must be divisible by groups={groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        # (O, C / groups, kh, kw)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and a uniform bias, as nn.Conv2d and torchvision do."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)  # pyright: ignore[reportPrivateUsage]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """Applies the deformable convolution.

        Args:
            input: (N, C, H, W).
            offset: (N, 2 * G * kh * kw, H_out, W_out), (dy, dx) per offset group and tap.
            mask: (N, G * kh * kw, H_out, W_out) or None.

        Returns:
            (N, O, H_out, W_out).
        """
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def __repr__(self) -> str:
        parts = [
            f"{self.in_channels}",
            f"{self.out_channels}",
            f"kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        if self.padding != (0, 0):
            parts.append(f"padding={self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        return f"{self.__class__.__name__}({', '.join(parts)})"
