"""Autocast kernels of the ops, for CPU and CUDA autocast (torchvision registers the same rule).

Under `torch.autocast(device, dtype=torch.bfloat16 or torch.float16)`, an op's float16 and
bfloat16 tensor arguments (lists of tensors too) are cast to float32, the op runs in float32
(its autograd formula included: gradients flow back through the casts), and its floating outputs
are cast back to the dtype of its first tensor argument (the features or the boxes), as
torchvision's autocast kernels return `.to(input.scalar_type())`. float64 arguments are left as
they are (as `at::autocast::cached_cast`). Index outputs (nms, argmax) keep their integer dtype.

On the CPU the RoI pooling ops (`NATIVE_CPU_OPS`) skip those casts: their float16/bfloat16
kernels read the reduced features and float32 (or any floating) RoIs, accumulate in float32 and
round each result once, which gives the bits of the float32 computation cast back (forward and
gradients; tests/ops/test_autocast.py), without the float32 copy of every feature map and of its
gradient (deform_roi_pool still makes its own float32 layout copy inside).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

# _library registers torch.ops.detector.*
from detector.ops import _library  # noqa: F401  # pyright: ignore[reportUnusedImport]

#: The autocast ops whose CPU kernels compute float16/bfloat16 features natively with float32
#: RoIs (see above): the RoI pooling ops.
NATIVE_CPU_OPS = (
    "roi_align",
    "multi_scale_roi_align",
    "roi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "deform_roi_pool",
    "deform_ps_roi_pool",
)

#: The public operators with an autocast kernel (their backward ops run inside their autograd).
#: deform_conv2d's weight stays float32 under autocast, and nms / batched_nms take boxes, which
#: stay float32 in the models: these cast to float32.
AUTOCAST_OPS = (*NATIVE_CPU_OPS, "deform_conv2d", "nms", "batched_nms")

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


def _maps(args: tuple[object, ...]) -> list[Tensor]:
    """The feature maps (or boxes) of an op's arguments: its first argument, a tensor or a list."""
    # Each op's schema starts with a Tensor or a Tensor[] (multi_scale_roi_align's features).
    first = cast("Tensor | list[Tensor] | tuple[Tensor, ...]", args[0])
    return list(first) if isinstance(first, (list, tuple)) else [first]


def _cast_outputs(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors of an op's output (a tensor, a tuple or a list of them) cast to `dtype`."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    return type(value)(_cast_outputs(v, dtype) for v in value)


def _native_arguments(args: tuple[object, ...]) -> bool:
    """Whether the native reduced kernels take `args` as they are: the maps all of one
    float16/bfloat16 dtype, the RoIs (second argument) of any floating dtype, and every later
    floating tensor (deform_roi_pool's offset and mask) of the maps' dtype."""
    maps = _maps(args)
    dtype = maps[0].dtype
    later = [a for a in args[2:] if isinstance(a, Tensor) and a.is_floating_point()]
    return dtype in _REDUCED and all(t.dtype == dtype for t in (*maps, *later))


def _autocast_kernel(name: str, native: bool) -> Callable[..., Any]:
    """The op's autocast kernel; `native`: reduced features go to its own reduced kernel."""
    op = getattr(torch.ops.detector, name).default

    def kernel(*args: Any) -> Any:
        dtype = _maps(args)[0].dtype
        with _C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS):  # pyright: ignore[reportPrivateUsage]
            if native and _native_arguments(args):
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
