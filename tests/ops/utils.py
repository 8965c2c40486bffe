"""Helpers shared by the op tests: RoI generators, devices, dtypes and thread-count runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

#: devices to test on: CPU always, CUDA when a GPU is present (marked so it skips otherwise).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def random_rois(
    num: int,
    batch_size: int,
    height: int,
    width: int,
    spatial_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    outside: float = 0.1,
) -> Tensor:
    """Returns Tensor[num, 5] RoIs in image coordinates (feature size / spatial_scale).

    About `outside` of each side's extent lies beyond the image, so some RoIs cross the border.
    """
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    xy = torch.rand(num, 2, generator=g) * torch.tensor([img_w, img_h]) * (1 + 2 * outside)
    xy -= torch.tensor([img_w, img_h]) * outside
    wh = torch.rand(num, 2, generator=g) * torch.tensor([img_w, img_h]) * 0.5 + 1.0
    idx = torch.randint(0, batch_size, (num, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], dim=1).to(dtype)


def edge_case_rois(height: int, width: int, spatial_scale: float = 1.0) -> Tensor:
    """RoIs that stress the kernels: wholly outside, partly outside, zero-size, inverted, tiny."""
    h, w = height / spatial_scale, width / spatial_scale
    boxes = [
        [0, -50.0, -50.0, -10.0, -10.0],  # wholly outside (top-left)
        [0, w + 5, h + 5, w + 60, h + 60],  # wholly outside (bottom-right)
        [0, -10.0, -10.0, w / 2, h / 2],  # partly outside
        [0, w / 2, h / 2, w + 30, h + 30],  # partly outside
        [0, 3.0, 3.0, 3.0, 3.0],  # zero size
        [0, 10.0, 12.0, 4.0, 5.0],  # inverted
        [0, 1.2, 1.7, 1.3, 1.9],  # smaller than a pixel
        [0, 0.0, 0.0, w, h],  # the whole image
        [0, 0.5, 0.5, w - 0.5, h - 0.5],
    ]
    return torch.tensor(boxes, dtype=torch.float32)


def with_threads(num_threads: int, fn: Callable[[], object]) -> object:
    """Runs `fn` with torch's intra-op thread count set to `num_threads`, then restores it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    flat = t.contiguous().view(-1)
    return flat.view(_INT_OF_SIZE[flat.element_size()])


def assert_same_bits(a: Tensor, b: Tensor) -> None:
    """Asserts bitwise equality of two tensors (so NaNs at equal positions compare equal)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    assert torch.equal(_bits(a), _bits(b))


# Position-sensitive ops (ps_roi_pool, ps_roi_align): `pool(input, rois, output_size, scale)`.
PSPool = Callable[[Tensor, Tensor, tuple[int, int] | int, float], Tensor]


def ps_features(
    batch: int,
    channels_out: int,
    output_size: tuple[int, int],
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> Tensor:
    """Random features (N, C_out * PH * PW, H, W) for the position-sensitive ops."""
    g = torch.Generator().manual_seed(seed)
    channels = channels_out * output_size[0] * output_size[1]
    return torch.randn(batch, channels, height, width, generator=g, dtype=dtype).to(device)


def all_rois(batch: int, height: int, width: int, scale: float, num: int = 24) -> Tensor:
    """Random RoIs (some crossing the border) followed by the edge cases, in image pixels."""
    rois = random_rois(num, batch, height, width, scale)
    return torch.cat([rois, edge_case_rois(height, width, scale)])


def output_and_grad(fn, x: Tensor, grad_out_seed: int = 1) -> tuple[Tensor, Tensor]:
    """Output of fn(x) and d(sum(out * random)) / dx."""
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    g = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=out.dtype
    ).to(out.device)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


def check_ps_no_rois(pool: PSPool, device: str) -> None:
    """No RoIs: an empty (0, C_out, PH, PW) output and a zero input gradient."""
    x = ps_features(1, 2, (2, 2), 6, 7, device=device).requires_grad_()
    out = pool(x, torch.zeros(0, 5, device=device), 2, 1.0)
    assert out.shape == (0, 2, 2, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().sum() == 0


def check_ps_memory_formats(pool: PSPool, device: str) -> None:
    """Channels-last and non-contiguous inputs give the same bits as a contiguous one."""
    output_size = (3, 3)
    x = ps_features(2, 4, output_size, 12, 14, device=device)
    rois = all_rois(2, 12, 14, 0.5).to(device)
    out, grad = output_and_grad(lambda t: pool(t, rois, output_size, 0.5), x)
    variants = [
        x.contiguous(memory_format=torch.channels_last),
        x.transpose(2, 3).contiguous().transpose(2, 3),  # (H, W) strides swapped
        torch.stack([x, x], dim=-1)[..., 0],  # strided width
    ]
    for v in variants:
        assert torch.equal(v, x)
        v_out, v_grad = output_and_grad(lambda t: pool(t, rois, output_size, 0.5), v)
        torch.testing.assert_close(v_out, out, rtol=0, atol=0)
        torch.testing.assert_close(v_grad, grad, rtol=0, atol=0)


def check_ps_torch_compile(pool: PSPool) -> None:
    """torch.compile(fullgraph=True) gives the same output and gradient as eager."""
    x = ps_features(2, 3, (3, 3), 10, 12)
    rois = all_rois(2, 10, 12, 0.5)

    def fn(t: Tensor) -> Tensor:
        return pool(t, rois, 3, 0.5).square().sum()

    out, grad = output_and_grad(fn, x)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    compiled_out, compiled_grad = output_and_grad(compiled, x)
    torch.testing.assert_close(compiled_out, out)
    torch.testing.assert_close(compiled_grad, grad)


def check_ps_deterministic(pool: PSPool, num_rois: int) -> None:
    """The CPU forward and backward give the same bits across runs and for 1 or 2 threads."""
    x = ps_features(2, 40, (3, 3), 20, 24, seed=7)  # 40 channels: two channel blocks
    rois = all_rois(2, 20, 24, 0.5, num=num_rois)

    def run() -> tuple[Tensor, Tensor]:
        return output_and_grad(lambda t: pool(t, rois, 3, 0.5), x)

    out1, grad1 = with_threads(1, run)
    for threads in (1, 2):
        out2, grad2 = with_threads(threads, run)
        assert_same_bits(out1, out2)
        assert_same_bits(grad1, grad2)


def copies_of(fn: Callable[[], object], tensors: list[Tensor]) -> list[list[int]]:
    """Runs `fn` and returns the shapes of the dtype conversions (`aten::_to_copy`) it made of
    tensors shaped like one of `tensors` (the profiler records shapes, not identities)."""
    shapes = [list(t.shape) for t in tensors]
    with torch.profiler.profile(record_shapes=True) as prof:
        fn()
    converted = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy"]
    return [s for s in converted if s in shapes]
