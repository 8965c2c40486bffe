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

import torch
from torch import Tensor

from detector.ops import _library  # noqa: F401  (registers torch.ops.detector.*)

# Transform matrices of F(2x2, 3x3) (Lavin & Gray, Sec. 4.1); B^T and A^T are applied in the
# compiled kernels, G here.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_weight(weight: Tensor) -> Tensor:
    """Returns U = G w G^T for every (output, input) channel pair: (K, C, 3, 3) -> (16, K, C)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        shape = tuple(weight.shape)
        raise ValueError(f"winograd_conv3x3: `weight` must be (K, C, 3, 3), got {shape}")
    out_channels, in_channels = weight.shape[:2]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)  # (4, 3)
    # U[4i+j] = sum_ab G[i,a] G[j,b] w[a,b]: one (16, 9) @ (9, K*C) product.
    transform = torch.kron(g, g)  # (16, 9)
    u = transform @ weight.reshape(out_channels * in_channels, 9).t()  # (16, K*C)
    return u.view(16, out_channels, in_channels)


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
    return _WinogradConv3x3.apply(input, winograd_weight(weight), bias)


# Transient memory of one group of images: a convolution transforms and multiplies at most this
# many bytes of (16, channels, tiles) at once. A larger batch runs image group by image group
# (the transforms and products are 4x the size of the maps: a 2-image FPN P2 level of 512x683
# inputs would need 180 MB for each at once).
GROUP_BYTES = 64 << 20


def _image_groups(
    batch: int, channels: int, height: int, width: int, itemsize: int
) -> list[tuple[int, int]]:
    """Consecutive image ranges [(n0, n1), ...] whose (16, channels, tiles) fits GROUP_BYTES
    (at least one image each)."""
    per_image = 16 * channels * _tiles(1, height, width) * itemsize
    size = max(1, GROUP_BYTES // max(per_image, 1))
    return [(n0, min(n0 + size, batch)) for n0 in range(0, batch, size)]


def _concat(parts: list[Tensor]) -> Tensor:
    """torch.cat of the groups' results along dim 0; into recycled memory unless autograd is
    recording (double backward)."""
    if len(parts) == 1:
        return parts[0]
    if torch.is_grad_enabled():
        return torch.cat(parts)
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return torch.cat(parts, out=torch.ops.detector._recycled_empty(parts[0], shape))


class _WinogradConv3x3(torch.autograd.Function):
    """y = A^T [U (.) (B^T d B)] A over tiles, with U = G w G^T given (autograd reaches w through
    it). Saves the input, not its 4x larger transform, and recomputes that in the backward (a
    memory-bound pass, ~10% of the matrix products' time). Runs image group by image group
    (`GROUP_BYTES`). The backward is made of differentiable ops, so double backward works too."""

    @staticmethod
    def forward(ctx, input: Tensor, u: Tensor, bias: Tensor | None) -> Tensor:
        batch, _, height, width = input.shape
        out_channels, in_channels = u.shape[1], u.shape[2]
        groups = _image_groups(
            batch, max(out_channels, in_channels), height, width, input.element_size()
        )
        outputs = []
        for n0, n1 in groups:
            v = torch.ops.detector.winograd_input_transform(input[n0:n1])  # (16, C, T_g)
            m = torch.ops.detector._recycled_bmm(u, v)  # (16, K, C) @ (16, C, T_g) -> (16, K, T_g)
            del v  # free before the output is allocated (the transforms are 4x the maps' size)
            outputs.append(
                torch.ops.detector.winograd_output_transform(m, bias, n1 - n0, height, width)
            )
            del m
        ctx.save_for_backward(input, u)
        ctx.has_bias = bias is not None
        ctx.groups = groups
        return _concat(outputs)  # (N, K, H, W)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        input, u = ctx.saved_tensors
        _, _, height, width = input.shape
        # Products into recycled memory, except under double backward (create_graph), whose
        # graph needs torch.bmm's gradient.
        bmm = torch.bmm if torch.is_grad_enabled() else torch.ops.detector._recycled_bmm
        grad_inputs, grad_u, grad_bias = [], None, None
        for n0, n1 in ctx.groups:
            # (N_g, K, H, W) -> (16, K, T_g)
            grad_m = torch.ops.detector._winograd_output_transform_backward(grad[n0:n1])
            if ctx.needs_input_grad[0]:
                grad_v = bmm(u.transpose(1, 2), grad_m)  # (16, C, T_g)
                grad_inputs.append(
                    torch.ops.detector._winograd_input_transform_backward(
                        grad_v, n1 - n0, height, width
                    )
                )
                del grad_v  # free before v is recomputed
            if ctx.needs_input_grad[1]:
                v = torch.ops.detector.winograd_input_transform(input[n0:n1])
                part = bmm(grad_m, v.transpose(1, 2))  # (16, K, C)
                grad_u = part if grad_u is None else grad_u + part
                del v
            del grad_m
        grad_input = _concat(grad_inputs) if grad_inputs else None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_input, grad_u, grad_bias


def _tiles(batch: int, height: int, width: int) -> int:
    return batch * ((height + 1) // 2) * ((width + 1) // 2)


@torch.library.register_fake("detector::_recycled_empty")
def _recycled_empty_fake(like: Tensor, size: list[int]) -> Tensor:
    return like.new_empty(size)


@torch.library.register_fake("detector::_recycled_bmm")
def _recycled_bmm_fake(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


@torch.library.register_fake("detector::winograd_input_transform")
def _input_transform_fake(input: Tensor) -> Tensor:
    batch, channels, height, width = input.shape
    return input.new_empty((16, channels, _tiles(batch, height, width)))


@torch.library.register_fake("detector::_winograd_input_transform_backward")
def _input_transform_backward_fake(grad: Tensor, batch: int, height: int, width: int) -> Tensor:
    return grad.new_empty((batch, grad.shape[1], height, width))


@torch.library.register_fake("detector::winograd_output_transform")
def _output_transform_fake(
    m: Tensor, bias: Tensor | None, batch: int, height: int, width: int
) -> Tensor:
    return m.new_empty((batch, m.shape[1], height, width))


@torch.library.register_fake("detector::_winograd_output_transform_backward")
def _output_transform_backward_fake(grad: Tensor) -> Tensor:
    batch, channels, height, width = grad.shape
    return grad.new_empty((16, channels, _tiles(batch, height, width)))


# Autograd: each transform is linear, and its backward op is its adjoint, so the two ops of a pair
# are each other's gradients (which also gives double backward).


def _input_setup(ctx, inputs: tuple, output: Tensor) -> None:
    (input,) = inputs
    ctx.shape = tuple(input.shape)


def _input_backward(ctx, grad: Tensor) -> Tensor:
    batch, _, height, width = ctx.shape
    return torch.ops.detector._winograd_input_transform_backward(grad, batch, height, width)


def _input_adjoint_backward(ctx, grad: Tensor) -> tuple:
    return torch.ops.detector.winograd_input_transform(grad), None, None, None


def _output_setup(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.has_bias = inputs[1] is not None


def _output_backward(ctx, grad: Tensor) -> tuple:
    grad_m = torch.ops.detector._winograd_output_transform_backward(grad)
    grad_bias = grad.sum(dim=(0, 2, 3)) if ctx.has_bias else None
    return grad_m, grad_bias, None, None, None


def _output_adjoint_setup(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.shape = tuple(inputs[0].shape)


def _output_adjoint_backward(ctx, grad: Tensor) -> Tensor:
    batch, _, height, width = ctx.shape
    return torch.ops.detector.winograd_output_transform(grad, None, batch, height, width)


torch.library.register_autograd(
    "detector::winograd_input_transform", _input_backward, setup_context=_input_setup
)
torch.library.register_autograd(
    "detector::_winograd_input_transform_backward",
    _input_adjoint_backward,
    setup_context=lambda ctx, inputs, output: None,
)
torch.library.register_autograd(
    "detector::winograd_output_transform", _output_backward, setup_context=_output_setup
)
torch.library.register_autograd(
    "detector::_winograd_output_transform_backward",
    _output_adjoint_backward,
    setup_context=_output_adjoint_setup,
)
