"""Tests of deform_conv2d / DeformConv2d against torchvision.ops and a plain PyTorch reference.

Shape glossary: N images, C input channels, O output channels, kh x kw kernel, G offset groups,
P = H_out * W_out output positions.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor

from detector.layers import DeformConv2d
from detector.ops import deform_conv2d
from tests.ops.utils import DEVICES, assert_same_bits, with_threads


# --------------------------------------------------------------------------------------------
# Reference: bilinear sampling by explicit gathers, then the convolution as a matmul.
# --------------------------------------------------------------------------------------------
def _bilinear_zero_padded(planes: Tensor, y: Tensor, x: Tensor, height: int, width: int) -> Tensor:
    """Samples planes (N, G, Cg, H*W) at points y, x (N, G, S); zeros outside. -> (N, G, Cg, S)."""
    n, g, cg, _ = planes.shape
    inside = (y > -1) & (y < height) & (x > -1) & (x < width)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    corners = [
        (0, 0, (1 - ly) * (1 - lx)),
        (0, 1, (1 - ly) * lx),
        (1, 0, ly * (1 - lx)),
        (1, 1, ly * lx),
    ]
    result = planes.new_zeros(n, g, cg, y.shape[-1])
    for dy, dx, weight in corners:
        yy, xx = y0 + dy, x0 + dx
        valid = inside & (yy >= 0) & (yy <= height - 1) & (xx >= 0) & (xx <= width - 1)
        index = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
        # (N, G, S) -> (N, G, Cg, S)
        values = torch.gather(planes, 3, index.unsqueeze(2).expand(-1, -1, cg, -1))
        result = result + values * (weight * valid).unsqueeze(2)
    return result


def reference_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Plain PyTorch deform_conv2d (differentiable through autograd)."""
    n, c, height, width = input.shape
    out_channels, cw, kh, kw = weight.shape
    groups = c // cw
    offset_groups = offset.shape[1] // (2 * kh * kw)
    out_h, out_w = offset.shape[2:]
    dev, dt = input.device, input.dtype
    oy = torch.arange(out_h, device=dev, dtype=dt) * stride[0] - padding[0]
    ox = torch.arange(out_w, device=dev, dtype=dt) * stride[1] - padding[1]
    ky = torch.arange(kh, device=dev, dtype=dt) * dilation[0]
    kx = torch.arange(kw, device=dev, dtype=dt) * dilation[1]
    base_y = ky.view(kh, 1, 1, 1) + oy.view(1, 1, out_h, 1)  # (kh, 1, H_out, 1)
    base_x = kx.view(1, kw, 1, 1) + ox.view(1, 1, 1, out_w)  # (1, kw, 1, W_out)
    # (N, 2*G*kh*kw, H_out, W_out) -> (N, G, kh, kw, 2, H_out, W_out)
    off = offset.view(n, offset_groups, kh, kw, 2, out_h, out_w)
    y = (base_y + off[:, :, :, :, 0]).reshape(n, offset_groups, -1)  # (N, G, kh*kw*P)
    x = (base_x + off[:, :, :, :, 1]).reshape(n, offset_groups, -1)
    # (N, C, H, W) -> (N, G, C/G, H*W)
    planes = input.reshape(n, offset_groups, c // offset_groups, height * width)
    sampled = _bilinear_zero_padded(planes, y, x, height, width)  # (N, G, C/G, kh*kw*P)
    if mask is not None:
        # (N, G*kh*kw, H_out, W_out) -> (N, G, 1, kh*kw*P)
        sampled = sampled * mask.reshape(n, offset_groups, 1, -1)
    # (N, G, C/G, kh*kw*P) -> (N, groups, Cw*kh*kw, P)
    columns = sampled.reshape(n, groups, cw * kh * kw, out_h * out_w)
    # (O, Cw, kh, kw) -> (groups, O/groups, Cw*kh*kw)
    w = weight.reshape(groups, out_channels // groups, cw * kh * kw)
    out = torch.einsum("gok,ngkp->ngop", w, columns).reshape(n, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def make_inputs(
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch: int = 2,
    channels: int = 4,
    size: tuple[int, int] = (9, 8),
    out_channels: int = 6,
    kernel: tuple[int, int] = (3, 3),
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    groups: int = 1,
    offset_groups: int = 1,
    use_mask: bool = True,
    offset_scale: float = 2.0,
    seed: int = 0,
) -> dict:
    """Random deform_conv2d arguments; some offsets point far outside the map."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    out_h = _out_size(size[0], kh, stride, padding, dilation)
    out_w = _out_size(size[1], kw, stride, padding, dilation)
    offset = torch.randn(batch, 2 * offset_groups * kh * kw, out_h, out_w, generator=g)
    offset = offset * offset_scale
    far = torch.rand(offset.shape, generator=g) < 0.1
    offset[far] = offset[far].sign() * (max(size) + 5.0)  # wholly outside the map
    args = {
        "input": torch.randn(batch, channels, *size, generator=g),
        "offset": offset,
        "weight": torch.randn(out_channels, channels // groups, kh, kw, generator=g),
        "bias": torch.randn(out_channels, generator=g),
        "mask": torch.rand(batch, offset_groups * kh * kw, out_h, out_w, generator=g)
        if use_mask
        else None,
    }
    for name, value in args.items():
        if value is not None:
            args[name] = value.to(device=device, dtype=dtype).requires_grad_()
    args["stride"], args["padding"], args["dilation"] = stride, padding, dilation
    return args


TENSOR_ARGS = ["input", "offset", "weight", "bias", "mask"]


def run_with_grads(fn, args: dict, grad_output: Tensor | None = None) -> tuple[Tensor, dict]:
    """Output of fn(**args) and the gradients of <output, grad_output> w.r.t. the tensor args."""
    out = fn(**args)
    if grad_output is None:
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grad_output = grad_output.to(out)
    tensors = {k: args[k] for k in TENSOR_ARGS if args.get(k) is not None}
    grads = torch.autograd.grad(out, list(tensors.values()), grad_output)
    return out.detach(), dict(zip(tensors, grads, strict=True))


def assert_close_scaled(actual: Tensor, expected: Tensor, tol: float = 1e-5) -> None:
    """|actual - expected| <= tol * (|expected| + max|expected|): error relative to magnitude.

    float32 outputs and gradients are sums of C*kh*kw (or N*P) products, computed in a different
    order than torchvision's, so the rounding error scales with the largest value of the tensor.
    """
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1.0))


CONFIGS = {
    "basic": {},
    "no_mask": {"use_mask": False},
    "stride2": {"stride": 2},
    "dilation2_pad0": {"dilation": 2, "padding": 0, "size": (11, 10)},
    "pad0": {"padding": 0},
    "weight_groups2": {"groups": 2, "out_channels": 4},
    "offset_groups2": {"offset_groups": 2},
    "groups2_offset_groups2": {"groups": 2, "offset_groups": 2, "out_channels": 4},
    "groups2_offset_groups3": {"channels": 6, "groups": 2, "offset_groups": 3},
    "batch1_rect_kernel": {"batch": 1, "kernel": (3, 2), "channels": 5},
    "large_offsets": {"offset_scale": 8.0},
    "1x1_kernel": {"kernel": (1, 1), "padding": 0},
}


# --------------------------------------------------------------------------------------------
# Equality with torchvision and the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torchvision_float32(device: str, config: str) -> None:
    args = make_inputs(device, **CONFIGS[config])
    out, grads = run_with_grads(deform_conv2d, args)
    expected_out, expected_grads = run_with_grads(torchvision.ops.deform_conv2d, args)
    assert_close_scaled(out, expected_out)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert_close_scaled(grads[name], expected_grads[name])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference_float64(device: str, config: str) -> None:
    args = make_inputs(device, dtype=torch.float64, **CONFIGS[config])
    ref_args = dict(args)
    for key in ("stride", "padding", "dilation"):
        ref_args[key] = (args[key], args[key])
    out, grads = run_with_grads(deform_conv2d, args)
    expected_out, expected_grads = run_with_grads(reference_deform_conv2d, ref_args)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_memory_layouts(device: str, layout: str) -> None:
    args = make_inputs(device, groups=2, offset_groups=2, out_channels=4)
    expected_out, expected_grads = run_with_grads(torchvision.ops.deform_conv2d, args)
    moved = dict(args)
    with torch.no_grad():
        for name in ("input", "offset", "mask"):
            t = args[name]
            if layout == "channels_last":
                t = t.contiguous(memory_format=torch.channels_last)
            else:  # every other column of a twice-as-wide tensor
                t = torch.repeat_interleave(t, 2, dim=3)[..., ::2]
                assert not t.is_contiguous()
            moved[name] = t.requires_grad_()
        weight = args["weight"]
        if layout == "channels_last":
            weight = weight.contiguous(memory_format=torch.channels_last)
        else:
            weight = weight.transpose(2, 3).contiguous().transpose(2, 3)
        moved["weight"] = weight.requires_grad_()
    out, grads = run_with_grads(deform_conv2d, moved)
    assert_close_scaled(out, expected_out)
    for name in grads:
        assert_close_scaled(grads[name], expected_grads[name])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_mask", [True, False])
def test_zero_offset_equals_conv2d(device: str, use_mask: bool) -> None:
    """With a zero-initialized offset conv (offsets 0, mask 1) the layer is a plain conv."""
    torch.manual_seed(0)
    layer = DeformConv2d(8, 6, 3, stride=1, padding=1, dilation=1, groups=2).to(device)
    x = torch.randn(2, 8, 10, 11, device=device, requires_grad=True)
    offset = torch.zeros(2, 18, 10, 11, device=device, requires_grad=True)
    mask = torch.ones(2, 9, 10, 11, device=device, requires_grad=True) if use_mask else None
    out = layer(x, offset, mask)
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1, groups=2)
    assert_close_scaled(out, expected)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, layer.weight, layer.bias], grad_out)
    expected_grads = torch.autograd.grad(expected, [x, layer.weight, layer.bias], grad_out)
    for g, e in zip(grads, expected_grads, strict=True):
        assert_close_scaled(g, e)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_matches_torchvision_layer(device: str) -> None:
    torch.manual_seed(0)
    ours = DeformConv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), bias=False).to(device)
    theirs = torchvision.ops.DeformConv2d(
        4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), bias=False
    ).to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 9, 9, device=device)
    out_h, out_w = _out_size(9, 3, 2, 1, 1), _out_size(9, 2, 2, 1, 2)
    offset = torch.randn(2, 12, out_h, out_w, device=device)
    mask = torch.rand(2, 6, out_h, out_w, device=device)
    assert_close_scaled(ours(x, offset, mask), theirs(x, offset, mask))
    assert_close_scaled(ours(x, offset), theirs(x, offset))
    assert repr(ours) == repr(theirs)
    assert repr(ours) == (
        "DeformConv2d(4, 6, kernel_size=(3, 2), stride=(2, 2), padding=(1, 1), "
        "dilation=(1, 2), bias=False)"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device: str) -> None:
    args = make_inputs(device, batch=0)
    out, grads = run_with_grads(deform_conv2d, args)
    assert out.shape == (0, 6, 9, 8)
    assert grads["input"].shape == args["input"].shape
    assert torch.equal(grads["bias"], torch.zeros_like(grads["bias"]))


# --------------------------------------------------------------------------------------------
# Autograd, operator registration, compile, determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", ["basic", "no_mask", "groups2_offset_groups2"])
def test_gradcheck(device: str, config: str) -> None:
    params = dict(CONFIGS[config], size=(4, 4), batch=1, offset_scale=1.5)
    params.setdefault("channels", 4)
    params.setdefault("out_channels", 2 if config != "groups2_offset_groups2" else 4)
    args = make_inputs(device, dtype=torch.float64, **params)
    names = [k for k in TENSOR_ARGS if args.get(k) is not None]

    def fn(*tensors: Tensor) -> Tensor:
        return deform_conv2d(**dict(args, **dict(zip(names, tensors, strict=True))))

    assert torch.autograd.gradcheck(fn, tuple(args[k] for k in names), atol=1e-6, fast_mode=True)


def _op_args(args: dict) -> tuple:
    kh, kw = args["weight"].shape[-2:]
    groups = args["input"].shape[1] // args["weight"].shape[1]
    offset_groups = args["offset"].shape[1] // (2 * kh * kw)
    s, p, d = args["stride"], args["padding"], args["dilation"]
    return (
        args["input"], args["offset"], args["weight"], args["mask"], args["bias"],
        s, s, p, p, d, d, groups, offset_groups,
    )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_mask", [True, False])
def test_opcheck(device: str, use_mask: bool) -> None:
    args = make_inputs(device, use_mask=use_mask, groups=2, out_channels=4, stride=2)
    op_args = _op_args(args)
    torch.library.opcheck(torch.ops.detector.deform_conv2d, op_args)
    out = torch.ops.detector.deform_conv2d(*op_args)
    backward_args = (torch.randn_like(out), *op_args[:4], *op_args[5:])
    torch.library.opcheck(
        torch.ops.detector._deform_conv2d_backward,
        backward_args,
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device: str) -> None:
    args = make_inputs(device, offset_groups=2)

    def fn(input, offset, weight, bias, mask):
        return deform_conv2d(input, offset, weight, bias, stride=1, padding=1, mask=mask).sum()

    tensors = [args[k] for k in ("input", "offset", "weight", "bias", "mask")]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    expected = fn(*tensors)
    actual = compiled(*tensors)
    torch.testing.assert_close(actual, expected)
    grads = torch.autograd.grad(actual, tensors)
    expected_grads = torch.autograd.grad(expected, tensors)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("use_mask", [True, False])
def test_deterministic_across_runs_and_threads(use_mask: bool) -> None:
    # Large enough for several tasks per parallel loop; two chunks per image.
    args = make_inputs(
        "cpu", use_mask=use_mask, channels=32, size=(48, 45), out_channels=8, offset_groups=2,
        groups=2, batch=2,
    )  # fmt: skip

    def run() -> tuple[Tensor, dict]:
        return run_with_grads(deform_conv2d, args)

    out1, grads1 = with_threads(1, run)
    out2, grads2 = with_threads(2, run)
    out3, grads3 = with_threads(2, run)
    assert_same_bits(out1, out2)
    assert_same_bits(out2, out3)
    for name in grads1:
        assert_same_bits(grads1[name], grads2[name])
        assert_same_bits(grads2[name], grads3[name])


# --------------------------------------------------------------------------------------------
# Misuse
# --------------------------------------------------------------------------------------------
def test_offset_channels_must_match_kernel() -> None:
    args = make_inputs()
    args["offset"] = args["offset"].detach()[:, :17]
    with pytest.raises(RuntimeError, match=r"deform_conv2d: `offset`\.shape\[1\] = 17"):
        deform_conv2d(**args)
    args["offset"] = args["offset"][:, :5]
    with pytest.raises(RuntimeError, match=r"deform_conv2d: `offset`\.shape\[1\] = 5"):
        deform_conv2d(**args)


def test_offset_groups_must_divide_channels() -> None:
    args = make_inputs(channels=4, out_channels=2)
    args["offset"] = torch.cat([args["offset"].detach()] * 3, dim=1)  # 3 offset groups
    with pytest.raises(RuntimeError, match="deform_conv2d: the input channels 4 must be divisible"):
        deform_conv2d(**args)


def test_mask_shape() -> None:
    args = make_inputs()
    args["mask"] = args["mask"].detach()[:, :8]
    with pytest.raises(RuntimeError, match="deform_conv2d: expected `mask` of shape"):
        deform_conv2d(**args)
    args["mask"] = args["mask"][0]
    with pytest.raises(ValueError, match="deform_conv2d: `mask` must be 4-D"):
        deform_conv2d(**args)


def test_weight_channels_must_divide_input_channels() -> None:
    args = make_inputs(channels=4)
    args["weight"] = torch.randn(6, 3, 3, 3)
    with pytest.raises(RuntimeError, match=r"deform_conv2d: `weight`\.shape\[1\] = 3 must divide"):
        deform_conv2d(**args)


def test_other_misuse() -> None:
    args = make_inputs()
    with pytest.raises(RuntimeError, match="deform_conv2d: `offset` must have the output's"):
        deform_conv2d(**dict(args, stride=2))
    with pytest.raises(ValueError, match="deform_conv2d: `input` must be 4-D"):
        deform_conv2d(**dict(args, input=args["input"][0]))
    with pytest.raises(ValueError, match="deform_conv2d: `weight` must be 4-D"):
        deform_conv2d(**dict(args, weight=args["weight"][0]))
    with pytest.raises(RuntimeError, match="deform_conv2d: expected `bias` of shape"):
        deform_conv2d(**dict(args, bias=args["bias"][:3]))
    with pytest.raises(RuntimeError, match="deform_conv2d: `input`, `offset` and `weight` must"):
        deform_conv2d(**dict(args, weight=args["weight"].double()))
    with pytest.raises(ValueError, match="deform_conv2d: `stride` must be an int or a pair"):
        deform_conv2d(**dict(args, stride=(1, 1, 1)))
    with pytest.raises(RuntimeError, match="deform_conv2d: `stride` must be positive"):
        deform_conv2d(**dict(args, stride=0))
    with pytest.raises(ValueError, match="DeformConv2d: in_channels=5 must be divisible"):
        DeformConv2d(5, 4, 3, groups=2)
