"""3x3 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, CVPR 2016).

Shapes: N images, C input and K output channels, H x W maps, T = N * ceil(H/2) * ceil(W/2) tiles
of 2x2 outputs, 16 = 4 x 4 transform positions.

For a 3x3 kernel with stride 1, padding 1, dilation 1 and one group, every 2x2 output tile is

    y_tile = A^T [ (G w G^T) (.) (B^T d_tile B) ] A

where d_tile is the tile's 4x4 input window. Summed over input channels, the element-wise product
becomes 16 matrix products (K x C) @ (C x T), one per transform position: 16 multiplications per
tile and channel pair where the direct convolution needs 4 * 9 = 36 (2.25x fewer). The input and
output transforms are compiled kernels (`torch.ops.detector.winograd_*`, CPU), each registered
with its adjoint as its gradient; the weight transform and the matrix products are ATen ops (the
products write into recycled memory, `torch.ops.detector._recycled_bmm`, as the transforms do:
ops/cpu/recycled_memory.h). The gradients are exact: the input's is the adjoint of the whole
chain, the weight's comes through G w G^T.

The result equals `F.conv2d(input, weight, bias, padding=1)` up to float rounding (relative error
~3e-6 in float32: the transforms add and subtract up to 9 values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from detector.ops._library import AutogradContext, register_autograd, register_fake

# Transform matrices of F(2x2, 3x3) (Lavin & Gray, Sec. 4.1); B^T and A^T are applied in the
# compiled kernels, G here.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _weight_transform(like: Tensor) -> Tensor:
    """G (x) G, the (16, 9) matrix taking a flattened 3x3 kernel w to U = G w G^T flattened:
    U[4i+j] = sum_ab G[i,a] G[j,b] w[a,b]. In `like`'s dtype and device."""
    g = torch.tensor(_G, dtype=like.dtype, device=like.device)  # (4, 3)
    return torch.kron(g, g)


def winograd_weight(weight: Tensor) -> Tensor:
    """Returns U = G w G^T for every (output, input) channel pair: (K, C, 3, 3) -> (16, K, C)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        shape = tuple(weight.shape)
        raise ValueError(f"winograd_conv3x3: `weight` must be (K, C, 3, 3), got {shape}")
    out_channels, in_channels = weight.shape[:2]
    # one (16, 9) @ (9, K*C) product
    u = _weight_transform(weight) @ weight.reshape(out_channels * in_channels, 9).t()
    return u.view(16, out_channels, in_channels)


def winograd_weight_adjoint(grad_u: Tensor) -> Tensor:
    """The gradient of `winograd_weight` (its adjoint): (16, K, C) -> (K, C, 3, 3)."""
    _, out_channels, in_channels = grad_u.shape
    # (9, 16) @ (16, K*C) -> (9, K*C)
    grad_w = _weight_transform(grad_u).t() @ grad_u.reshape(16, -1)
    return grad_w.t().reshape(out_channels, in_channels, 3, 3)


def winograd_conv3x3(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.conv2d(input, weight, bias, stride=1, padding=1)` for a 3x3 `weight`, by Winograd.

    Args:
        input: (N, C, H, W) float32 or float64 on the CPU (NCHW or channels-last).
        weight: (K, C, 3, 3).
        bias: (K,) or None.

    Returns:
        (N, K, H, W), NCHW-contiguous.
    """
    if input.dim() != 4 or input.shape[1] != weight.shape[1]:
        raise ValueError(
            f"winograd_conv3x3: `input` must be (N, {weight.shape[1]}, H, W) for a weight of "
            f"shape {tuple(weight.shape)}, got {tuple(input.shape)}"
        )
    return _WinogradConv3x3.apply(input, weight, bias)


# Transient memory of one piece: a convolution transforms and multiplies at most about this many
# bytes of (16, channels, tiles) at once (the transforms and products are 4x the size of the
# maps: a 2-image FPN P2 level of 512x683 inputs would need 180 MB for each at once, one
# 800x1216 image 250 MB). A larger batch runs image group by image group; a larger image runs
# band of rows by band of rows. Measured (docs/benchmarks.md): at 512x683, where 64 MB cuts P2
# into 2 bands per image, training steps took as long as with 128 MB (one band) and 130 MB less
# peak memory; a Mask R-CNN inference at 800x1216 peaked at 791 MiB (1110 with 128 MB).
GROUP_BYTES = 64 << 20


@dataclass(frozen=True)
class _Piece:
    """Output rows [r0, r1) of images [n0, n1), computed from input rows [a, b).

    The piece's own convolution runs on the rows [a, b) (zero padding at a and b, which is wrong
    only for rows the piece does not keep): a = r0 - 1 and b = r1 + 1, clipped to the map, hold
    every input row the kept rows need. F(2x2, 3x3) computes each output row of a tile from its
    3 input rows only (A^T's row 0 combines B^T's rows 0-2, row 1 rows 1-3), so a tile that
    straddles a or b still gives kept rows exactly.
    """

    n0: int
    n1: int
    r0: int
    r1: int
    a: int
    b: int

    @property
    def whole_images(self) -> bool:
        return self.a == self.r0 and self.b == self.r1

    def keep(self, piece_output: Tensor) -> Tensor:
        """The kept rows of the piece's output (N_g, K, b - a, W) -> (N_g, K, r1 - r0, W)."""
        return piece_output[:, :, self.r0 - self.a : self.r1 - self.a]


def _pieces(batch: int, channels: int, height: int, width: int, itemsize: int) -> list[_Piece]:
    """Image groups, or row bands of single images, each with a (16, channels, tiles) of about
    GROUP_BYTES at most (at least one image, or 2 output rows, per piece)."""
    tile_row_bytes = 16 * channels * ((width + 1) // 2) * itemsize
    image_bytes = tile_row_bytes * ((height + 1) // 2)
    if image_bytes <= GROUP_BYTES:
        size = max(1, GROUP_BYTES // max(image_bytes, 1))
        return [
            _Piece(n0, min(n0 + size, batch), 0, height, 0, height) for n0 in range(0, batch, size)
        ]
    rows = 2 * max(1, GROUP_BYTES // tile_row_bytes - 1)  # even: the band + a tile row of halo
    return [
        _Piece(n, n + 1, r0, min(r0 + rows, height), max(r0 - 1, 0), min(r0 + rows + 1, height))
        for n in range(batch)
        for r0 in range(0, height, rows)
    ]


def _conv_piece(input: Tensor, u: Tensor, bias: Tensor | None) -> Tensor:
    """The Winograd convolution of the whole of `input` (N_g, C, h, W) -> (N_g, K, h, W)."""
    batch, _, height, width = input.shape
    v = torch.ops.detector.winograd_input_transform(input)  # (16, C, T_g)
    m = torch.ops.detector._recycled_bmm(u, v)  # (16, K, C) @ (16, C, T_g) -> (16, K, T_g)
    del v  # free before the output is allocated (the transforms are 4x the maps' size)
    return torch.ops.detector.winograd_output_transform(m, bias, batch, height, width)


def _new_maps(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An uninitialized tensor for the pieces' results: recycled memory unless autograd is
    recording (double backward)."""
    if torch.is_grad_enabled():
        return like.new_empty(shape)
    return torch.ops.detector._recycled_empty(like, shape)


class _Context(AutogradContext[tuple[Tensor, Tensor]], Protocol):
    """Saved: the input and the weight."""

    has_bias: bool
    pieces: list[_Piece]


class _WinogradConv3x3(torch.autograd.Function):
    """y = A^T [U (.) (B^T d B)] A over tiles, with U = G w G^T. Saves the input, not its 4x
    larger transform, and the weight, not its 1.8x larger U (every layer's U would stay alive
    until the backward: ~100 MB for a ResNet-18 FPN); both are recomputed in the backward (the
    input transform is a memory-bound pass, ~10% of the matrix products' time; U is one small
    product). Runs piece by piece (`_pieces`, `GROUP_BYTES`). The backward is made of
    differentiable ops, so double backward works too."""

    @staticmethod
    def forward(ctx: _Context, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        batch, _, height, width = input.shape
        u = winograd_weight(weight)  # (16, K, C)
        channels = max(u.shape[1], u.shape[2])  # K, C
        pieces = _pieces(batch, channels, height, width, input.element_size())
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        ctx.pieces = pieces
        if len(pieces) == 1:
            return _conv_piece(input, u, bias)
        output = _new_maps(input, (batch, u.shape[1], height, width))  # (N, K, H, W)
        for p in pieces:
            rows = input[p.n0 : p.n1, :, p.a : p.b]
            output[p.n0 : p.n1, :, p.r0 : p.r1] = p.keep(_conv_piece(rows, u, bias))
        return output

    @staticmethod
    def backward(  # pyright: ignore[reportIncompatibleMethodOverride]  (one output: one gradient)
        ctx: _Context, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        input, weight = ctx.saved_tensors
        u = winograd_weight(weight)  # (16, K, C)
        # Products into recycled memory, except under double backward (create_graph), whose
        # graph needs torch.bmm's gradient.
        bmm = torch.bmm if torch.is_grad_enabled() else torch.ops.detector._recycled_bmm
        grad_input, grad_u, grad_bias = None, None, None
        if ctx.needs_input_grad[0] and len(ctx.pieces) > 1:
            grad_input = _new_maps(input, tuple(input.shape)).zero_()  # (N, C, H, W)
        for p in ctx.pieces:
            grad_rows = _piece_grad(grad, p)  # (N_g, K, b - a, W), 0 on rows not kept
            grad_m = torch.ops.detector._winograd_output_transform_backward(grad_rows)
            if ctx.needs_input_grad[0]:
                grad_v = bmm(u.transpose(1, 2), grad_m)  # (16, C, T_g)
                part = torch.ops.detector._winograd_input_transform_backward(
                    grad_v, p.n1 - p.n0, p.b - p.a, input.shape[3]
                )
                del grad_v  # free before v is recomputed
                if grad_input is None:
                    grad_input = part
                else:
                    grad_input[p.n0 : p.n1, :, p.a : p.b] += part  # bands overlap by their halo
            if ctx.needs_input_grad[1]:
                v = torch.ops.detector.winograd_input_transform(input[p.n0 : p.n1, :, p.a : p.b])
                part = bmm(grad_m, v.transpose(1, 2))  # (16, K, C)
                grad_u = part if grad_u is None else grad_u + part
                del v
            del grad_m
        grad_weight = None if grad_u is None else winograd_weight_adjoint(grad_u)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias


def _piece_grad(grad: Tensor, piece: _Piece) -> Tensor:
    """The output gradient of a piece's own convolution: (N, K, H, W) -> (N_g, K, b - a, W), the
    kept rows' gradient and zeros on the (at most 2) rows it computes but does not keep."""
    kept = grad[piece.n0 : piece.n1, :, piece.r0 : piece.r1]
    if piece.whole_images:
        return kept
    rows = _new_maps(grad, (piece.n1 - piece.n0, grad.shape[1], piece.b - piece.a, grad.shape[3]))
    top, bottom = piece.r0 - piece.a, piece.r1 - piece.a
    rows[:, :, :top] = 0
    rows[:, :, top:bottom] = kept
    rows[:, :, bottom:] = 0
    return rows


def _tiles(batch: int, height: int, width: int) -> int:
    return batch * ((height + 1) // 2) * ((width + 1) // 2)


@register_fake("detector::_recycled_empty")
def _recycled_empty_fake(like: Tensor, size: list[int]) -> Tensor:
    return like.new_empty(size)


@register_fake("detector::_recycled_bmm")
def _recycled_bmm_fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


@register_fake("detector::winograd_input_transform")
def _input_transform_fake(input: Tensor) -> Tensor:
    batch, channels, height, width = input.shape
    return input.new_empty((16, channels, _tiles(batch, height, width)))


@register_fake("detector::_winograd_input_transform_backward")
def _input_transform_backward_fake(grad: Tensor, batch: int, height: int, width: int) -> Tensor:
    return grad.new_empty((batch, grad.shape[1], height, width))


@register_fake("detector::winograd_output_transform")
def _output_transform_fake(
    m: Tensor, bias: Tensor | None, batch: int, height: int, width: int
) -> Tensor:
    return m.new_empty((batch, m.shape[1], height, width))


@register_fake("detector::_winograd_output_transform_backward")
def _output_transform_backward_fake(grad: Tensor) -> Tensor:
    batch, channels, height, width = grad.shape
    return grad.new_empty((16, channels, _tiles(batch, height, width)))


# Autograd: each transform is linear, and its backward op is its adjoint, so the two ops of a pair
# are each other's gradients (which also gives double backward).


class _ShapeContext(Protocol):
    shape: tuple[int, ...]  # (N, C, H, W) of the maps


class _BiasContext(Protocol):
    has_bias: bool


def _input_setup(ctx: _ShapeContext, inputs: tuple[Tensor], output: Tensor) -> None:
    (input,) = inputs
    ctx.shape = tuple(input.shape)


def _input_backward(ctx: _ShapeContext, grad: Tensor) -> Tensor:
    batch, _, height, width = ctx.shape
    return torch.ops.detector._winograd_input_transform_backward(grad, batch, height, width)


def _input_adjoint_setup(ctx: object, inputs: tuple[Tensor, int, int, int], output: Tensor) -> None:
    """Nothing to keep: the gradient is the input transform of the incoming gradient."""


def _input_adjoint_backward(ctx: object, grad: Tensor) -> tuple[Tensor, None, None, None]:
    return torch.ops.detector.winograd_input_transform(grad), None, None, None


def _output_setup(
    ctx: _BiasContext, inputs: tuple[Tensor, Tensor | None, int, int, int], output: Tensor
) -> None:
    ctx.has_bias = inputs[1] is not None


def _output_backward(
    ctx: _BiasContext, grad: Tensor
) -> tuple[Tensor, Tensor | None, None, None, None]:
    grad_m = torch.ops.detector._winograd_output_transform_backward(grad)
    grad_bias = grad.sum(dim=(0, 2, 3)) if ctx.has_bias else None
    return grad_m, grad_bias, None, None, None


def _output_adjoint_setup(ctx: _ShapeContext, inputs: tuple[Tensor], output: Tensor) -> None:
    ctx.shape = tuple(inputs[0].shape)


def _output_adjoint_backward(ctx: _ShapeContext, grad: Tensor) -> Tensor:
    batch, _, height, width = ctx.shape
    return torch.ops.detector.winograd_output_transform(grad, None, batch, height, width)


register_autograd("detector::winograd_input_transform", _input_backward, setup_context=_input_setup)
register_autograd(
    "detector::_winograd_input_transform_backward",
    _input_adjoint_backward,
    setup_context=_input_adjoint_setup,
)
register_autograd(
    "detector::winograd_output_transform", _output_backward, setup_context=_output_setup
)
register_autograd(
    "detector::_winograd_output_transform_backward",
    _output_adjoint_backward,
    setup_context=_output_adjoint_setup,
)
