"""Winograd F(2x2, 3x3) convolution (detector.ops.winograd) against F.conv2d, the oracle.

CPU only: the transforms have CPU kernels, and `detector.layers.Conv2d` uses them only there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.ops import winograd
from detector.ops.winograd import winograd_conv3x3, winograd_weight
from tests.ops.utils import assert_same_bits, with_threads

# (N, C, K, H, W): odd and even sizes, 1-pixel maps, a single tile row or column.
SHAPES = [(2, 5, 6, 7, 9), (1, 3, 4, 1, 1), (3, 4, 2, 6, 8), (1, 2, 3, 2, 3), (2, 3, 5, 1, 7)]


def _inputs(shape: tuple, dtype: torch.dtype, seed: int = 0):
    n, c, k, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(k, c, 3, 3, generator=g, dtype=dtype)
    bias = torch.randn(k, generator=g, dtype=dtype)
    return x, weight, bias


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_conv2d_float64(shape: tuple, with_bias: bool) -> None:
    x, weight, bias = _inputs(shape, torch.float64)
    bias = bias if with_bias else None
    expected = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(winograd_conv3x3(x, weight, bias), expected, rtol=1e-12, atol=1e-12)


def test_equals_conv2d_float32_at_detector_sizes() -> None:
    # An FPN level and a mask-head batch: 256 channels, relative error ~3e-6 of the largest output.
    for n, h, w in [(1, 50, 68), (10, 14, 14)]:
        x, weight, bias = _inputs((n, 256, 256, h, w), torch.float32)
        weight = weight * 0.02
        expected = F.conv2d(x, weight, bias, padding=1)
        error = (winograd_conv3x3(x, weight, bias) - expected).abs().max()
        assert error <= 2e-5 * expected.abs().max()


def test_channels_last_input() -> None:
    x, weight, bias = _inputs((2, 8, 4, 9, 10), torch.float64)
    out = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), weight, bias)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradients_equal_conv2d(shape: tuple) -> None:
    x, weight, bias = (t.requires_grad_() for t in _inputs(shape, torch.float64))
    grad = torch.randn(shape[0], shape[2], shape[3], shape[4], dtype=torch.float64)
    ours = torch.autograd.grad(winograd_conv3x3(x, weight, bias), (x, weight, bias), grad)
    expected = torch.autograd.grad(F.conv2d(x, weight, bias, padding=1), (x, weight, bias), grad)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


# (N, C, K, H, W), GROUP_BYTES, pieces. Float64; a tile row of (5, 6, 4, 8, 10) is 3840 bytes of
# transform (16 x 6 channels x 5 tiles x 8), an image 15360; of (2, 3, 5, 7, 9) 3200 and 12800.
PIECE_CASES = [
    ((5, 6, 4, 8, 10), 2 * 15360, 3),  # groups of 2 images
    ((5, 6, 4, 8, 10), 15360, 5),  # one image per group
    ((5, 6, 4, 8, 10), 4 * 3840 - 1, 10),  # bands of 4 rows (2 tile rows + a halo tile row)
    ((5, 6, 4, 8, 10), 1, 20),  # bands of 2 rows
    ((2, 3, 5, 7, 9), 4 * 3200 - 1, 4),  # odd height: bands of rows 0-3 and 4-6
    ((2, 3, 5, 7, 9), 1, 8),
]


@pytest.mark.parametrize("shape,group_bytes,num_pieces", PIECE_CASES)
def test_pieces_give_the_same_function(
    monkeypatch: pytest.MonkeyPatch, shape: tuple, group_bytes: int, num_pieces: int
) -> None:
    n, c, k, h, w = shape
    monkeypatch.setattr(winograd, "GROUP_BYTES", group_bytes)
    pieces = winograd._pieces(n, max(c, k), h, w, 8)
    assert len(pieces) == num_pieces
    covered = torch.zeros(n, h, dtype=torch.int64)
    for p in pieces:
        covered[p.n0 : p.n1, p.r0 : p.r1] += 1
    assert torch.equal(covered, torch.ones_like(covered))  # every output row exactly once
    x, weight, bias = (t.requires_grad_() for t in _inputs(shape, torch.float64))
    grad = torch.randn(n, k, h, w, dtype=torch.float64)
    out = winograd_conv3x3(x, weight, bias)
    expected = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    theirs = torch.autograd.grad(expected, (x, weight, bias), grad, create_graph=True)
    plain = torch.autograd.grad(out, (x, weight, bias), grad, retain_graph=True)  # recycled path
    for a, b in zip(plain, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    ours = torch.autograd.grad(out, (x, weight, bias), grad, create_graph=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    # Double backward through the pieces' backward.
    second = torch.autograd.grad(ours[1].sum(), x)[0]
    torch.testing.assert_close(second, torch.autograd.grad(theirs[1].sum(), x)[0])
    with torch.no_grad():  # the recycled-memory assembly
        torch.testing.assert_close(winograd_conv3x3(x, weight, bias), expected)


@pytest.mark.parametrize("shape", [(1, 2, 3, 3, 5), (2, 2, 1, 1, 3)])  # small: seconds
def test_gradcheck_and_gradgradcheck(shape: tuple) -> None:
    inputs = tuple(t.requires_grad_() for t in _inputs(shape, torch.float64))
    assert torch.autograd.gradcheck(winograd_conv3x3, inputs)
    assert torch.autograd.gradgradcheck(winograd_conv3x3, inputs)


def test_weight_transform_is_g_w_gt() -> None:
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    expected = (g @ weight @ g.t()).permute(2, 3, 0, 1).reshape(16, 3, 2)
    torch.testing.assert_close(winograd_weight(weight), expected)


def test_same_bits_for_one_and_two_threads() -> None:
    x, weight, bias = (t.requires_grad_() for t in _inputs((2, 8, 8, 13, 11), torch.float32))
    grad = torch.randn(2, 8, 13, 11)

    def run():
        v = torch.ops.detector.winograd_input_transform(x)
        y = torch.ops.detector.winograd_output_transform(v[:, :8], bias, 2, 13, 11)
        return (v, y, *torch.autograd.grad(y, (x, bias), grad))

    for a, b in zip(with_threads(1, run), with_threads(2, run), strict=True):
        assert_same_bits(a, b)


def test_opcheck() -> None:
    x, _, bias = _inputs((2, 3, 3, 5, 7), torch.float32)
    v = torch.ops.detector.winograd_input_transform(x)
    ops = torch.ops.detector
    torch.library.opcheck(ops.winograd_input_transform, (x,))
    torch.library.opcheck(ops._winograd_input_transform_backward, (v, 2, 5, 7))
    torch.library.opcheck(ops.winograd_output_transform, (v, bias, 2, 5, 7))
    torch.library.opcheck(ops.winograd_output_transform, (v, None, 2, 5, 7))
    torch.library.opcheck(ops._winograd_output_transform_backward, (x,))


def test_bad_arguments_name_the_op_and_argument() -> None:
    x, weight, bias = _inputs((1, 3, 4, 5, 5), torch.float32)
    with pytest.raises(ValueError, match="winograd_input_transform: `input` must be"):
        torch.ops.detector.winograd_input_transform(x[0])
    with pytest.raises(TypeError, match="`input` must be float32 or float64"):
        torch.ops.detector.winograd_input_transform(x.to(torch.int32))
    v = torch.ops.detector.winograd_input_transform(x)
    with pytest.raises(ValueError, match="tiles do not match"):
        torch.ops.detector.winograd_output_transform(v, None, 1, 9, 9)
    with pytest.raises(ValueError, match="`bias` must have shape"):
        torch.ops.detector.winograd_output_transform(v, bias[:2], 1, 5, 5)
    with pytest.raises(ValueError, match="`weight` must be"):
        winograd_conv3x3(x, weight[..., :2], bias)
    with pytest.raises(ValueError, match="`input` must be"):
        winograd_conv3x3(x[:, :2], weight, bias)
