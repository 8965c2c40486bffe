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
