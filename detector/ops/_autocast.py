"""Autocast kernels of the ops, for CPU and CUDA autocast (torchvision registers the same rule).

Under `torch.autocast(device, dtype=torch.bfloat16 or torch.float16)`, an op's float16 and
bfloat16 tensor arguments (lists of tensors too) are cast to float32, the op runs in float32
(its autograd formula included: gradients flow back through the casts), and its floating outputs
are cast back to the dtype of its first tensor argument (the features or the boxes), as
torchvision's autocast kernels return `.to(input.scalar_type())`. float64 arguments are left as
they are (as `at::autocast::cached_cast`). Index outputs (nms, argmax) keep their integer dtype.

On the CPU the RoI Align ops (`NATIVE_CPU_OPS`) skip those casts: their float16/bfloat16 kernels
read the reduced features and float32 (or any floating) RoIs, accumulate in float32 and round
each result once, which gives the bits of the float32 computation cast back (forward and
gradients; tests/ops/test_autocast.py), without the float32 copy of every feature map and of its
gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

# _library registers torch.ops.detector.*
from detector.ops import _library  # noqa: F401  # pyright: ignore[reportUnusedImport]

#: The public operators with an autocast kernel (their backward ops run inside their autograd).
AUTOCAST_OPS = (
    "roi_align",
    "multi_scale_roi_align",
    "roi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "deform_roi_pool",
    "deform_ps_roi_pool",
    "deform_conv2d",
    "nms",
    "batched_nms",
)

#: The autocast ops whose CPU kernels compute float16/bfloat16 features natively (see above).
#: (roi_pool's and the position-sensitive ops' kernels take RoIs of the features' dtype only.)
NATIVE_CPU_OPS = ("roi_align", "multi_scale_roi_align")

_REDUCED = (torch.float16, torch.bfloat16)
# The dispatcher's keys and guards have no public Python API.
_C = torch._C  # pyright: ignore[reportPrivateUsage]
_AUTOCAST_KEYS = _C.DispatchKeySet(_C.DispatchKey.AutocastCPU) | _C.DispatchKeySet(
    _C.DispatchKey.AutocastCUDA
)


def _to_float32(value: object) -> object:
    """A float16/bfloat16 tensor (or each one of a list) as float32; anything else unchanged."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in _REDUCED else value
    if isinstance(value, (list, tuple)):
        values = cast("list[object] | tuple[object, ...]", value)
        return type(values)(_to_float32(v) for v in values)
    return value


def _first_dtype(args: tuple[object, ...]) -> torch.dtype:
    """The dtype of the first tensor argument (the first of a list of tensors)."""
    # Each op's schema starts with a Tensor or a Tensor[] (multi_scale_roi_align's features).
    first = cast("Tensor | list[Tensor] | tuple[Tensor, ...]", args[0])
    tensor = first[0] if isinstance(first, (list, tuple)) else first
    return tensor.dtype


def _cast_outputs(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of an op's output (a tensor, a tuple or a list of them) cast to `dtype`."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    return type(value)(_cast_outputs(v, dtype) for v in value)


def _features_of_one_reduced_dtype(args: tuple[object, ...]) -> bool:
    """Whether the first argument (a feature map, or a list of them) is float16/bfloat16, all
    of one dtype: what the native reduced kernels take."""
    first = cast("Tensor | list[Tensor] | tuple[Tensor, ...]", args[0])
    maps = list(first) if isinstance(first, (list, tuple)) else [first]
    return maps[0].dtype in _REDUCED and all(m.dtype == maps[0].dtype for m in maps)


def _autocast_kernel(name: str, native: bool) -> Callable[..., Any]:
    """The op's autocast kernel; `native`: reduced features go to its own reduced kernel."""
    op = getattr(torch.ops.detector, name).default

    def kernel(*args: Any) -> Any:
        dtype = _first_dtype(args)
        with _C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS):  # pyright: ignore[reportPrivateUsage]
            if native and _features_of_one_reduced_dtype(args):
                return op(*args)
            output = op(*(_to_float32(a) for a in args))
        return _cast_outputs(output, dtype)

    kernel.__name__ = f"{name}_autocast"
    return kernel


_LIBRARY = torch.library.Library("detector", "IMPL")
for _name in AUTOCAST_OPS:
    _cpu_kernel = _autocast_kernel(_name, native=_name in NATIVE_CPU_OPS)
    _LIBRARY.impl(_name, _cpu_kernel, "AutocastCPU")  # pyright: ignore[reportUnknownMemberType]
    _cuda_kernel = _autocast_kernel(_name, native=False)
    _LIBRARY.impl(_name, _cuda_kernel, "AutocastCUDA")  # pyright: ignore[reportUnknownMemberType]
