"""The recycled-memory pool of the CPU kernels (ops/cpu/recycled_memory.h) and `_recycled_bmm`.

Large outputs (>= 8 MB) come from a pool of freed blocks: a freed block is handed out again to a
request it fits (the smallest such block), and `_release_recycled_memory` empties the pool.
The Winograd input transform is the probe: its (16, C, T) output is such an allocation.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import detector.ops  # noqa: F401  (registers torch.ops.detector.*)

ops = torch.ops.detector


def transform(channels: int) -> torch.Tensor:
    """A (16, channels, 2304) float32 input transform: 147 KB per channel."""
    return ops.winograd_input_transform(torch.ones(1, channels, 96, 96))


def test_a_freed_block_is_reused_by_a_request_it_fits() -> None:
    ops._release_recycled_memory()
    first = transform(64)  # 9.4 MB
    address = first.data_ptr()
    del first
    again = transform(64)
    assert again.data_ptr() == address
    del again
    smaller = transform(48)  # 7.1 MB: below the pool's 8 MB, a plain allocation
    assert smaller.data_ptr() != address
    fits = transform(60)  # 8.8 MB: fits in the kept 9.4 MB block
    assert fits.data_ptr() == address
    ops._release_recycled_memory()


def test_the_smallest_kept_block_that_fits_is_chosen() -> None:
    ops._release_recycled_memory()
    large, medium = transform(128), transform(64)  # 18.9 MB, 9.4 MB
    large_address, medium_address = large.data_ptr(), medium.data_ptr()
    del large, medium
    small = transform(60)  # 8.8 MB: both fit, the 9.4 MB block is chosen
    assert small.data_ptr() == medium_address
    between = transform(80)  # 11.8 MB: only the 18.9 MB block fits
    assert between.data_ptr() == large_address
    larger = transform(160)  # 23.6 MB: no kept block fits, a new one
    assert larger.data_ptr() not in (large_address, medium_address)
    ops._release_recycled_memory()


def test_reused_memory_is_fully_overwritten() -> None:
    ops._release_recycled_memory()
    x = torch.randn(1, 64, 96, 96)
    expected = ops.winograd_input_transform(x).clone()
    stale = ops.winograd_input_transform(torch.full_like(x, 7.0))
    del stale
    assert torch.equal(ops.winograd_input_transform(x), expected)
    ops._release_recycled_memory()


def test_recycled_bmm_equals_bmm_and_checks_its_arguments() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16, 40, 30, generator=generator)
    b = torch.randn(16, 30, 7000, generator=generator)  # a 17.9 MB product: pooled
    torch.testing.assert_close(ops._recycled_bmm(a, b), torch.bmm(a, b), rtol=0, atol=0)
    torch.testing.assert_close(
        ops._recycled_bmm(a.transpose(1, 2).contiguous().transpose(1, 2), b), torch.bmm(a, b)
    )
    torch.library.opcheck(ops._recycled_bmm, (a[:, :, :5], b[:, :5, :9]))
    # An empty inner dimension gives zeros, also in a reused block that held NaNs.
    stale = ops._recycled_bmm(torch.full((16, 1000, 5), float("nan")), torch.ones(16, 5, 200))
    del stale
    empty_inner = ops._recycled_bmm(torch.ones(16, 1000, 0), torch.ones(16, 0, 200))
    assert torch.equal(empty_inner, torch.zeros(16, 1000, 200))
    with pytest.raises(ValueError, match=r"_recycled_bmm: expected \(B, n, k\) and \(B, k, m\)"):
        ops._recycled_bmm(a, b.transpose(1, 2))
    with pytest.raises(TypeError, match="_recycled_bmm: dtypes differ"):
        ops._recycled_bmm(a, b.double())


def test_bad_cap_environment_variable_is_a_clear_error() -> None:
    code = (
        "import torch, detector.ops\n"
        "torch.ops.detector.winograd_input_transform(torch.ones(1, 64, 96, 96))\n"
    )
    env = {**os.environ, "DETECTOR_RECYCLED_MEMORY_MB": "lots"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DETECTOR_RECYCLED_MEMORY_MB must be a whole number of MiB >= 0, got 'lots'" in (
        result.stderr
    )
