"""What precision the model computes in (MODEL.PRECISION).

    float32   everything in float32
    bfloat16  autocast to bfloat16: convolutions and matrix products in bfloat16 through oneDNN
              (CPU) or cuBLAS/cuDNN (CUDA); weights, losses, the optimizer state and the outputs
              stay float32
    auto      (the default) bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX-BF16:
              oneDNN's bfloat16 kernels are then faster than float32), float32 on any other CPU
              and on CUDA (where SOLVER.AMP chooses). DETECTOR_CPU_BFLOAT16=0 (or 1) in the
              environment overrides the CPU detection.

The model applies it itself (GeneralizedRCNN.forward), so training, evaluation, the Predictor and
tools/demo.py all compute in the same precision. SOLVER.AMP is the training-only switch of
detectron2's configs and still works on its own.

MODEL.MEMORY_FORMAT, the layout of the convolutions' weights and feature maps:

    contiguous     NCHW (float32 3x3 convolutions then run by Winograd, detector.layers.Conv2d)
    channels_last  NHWC: oneDNN's convolutions read and write it without reordering; every
                   layer then passes channels-last maps to the next
    auto           channels_last where the model computes in bfloat16 (above), else contiguous
"""

from __future__ import annotations

import contextlib
import functools
import os
from enum import StrEnum
from typing import Any

import torch

__all__ = [
    "PRECISIONS",
    "MemoryFormat",
    "Precision",
    "autocast",
    "autocast_dtype",
    "cpu_has_native_bfloat16",
    "describe",
    "torch_memory_format",
]

# "0" or "1": overrides the CPU detection of cpu_has_native_bfloat16 (so MODEL.PRECISION auto).
# The test suite sets 0, so that its results do not depend on the CPU it runs on.
NATIVE_BFLOAT16_ENV = "DETECTOR_CPU_BFLOAT16"


class Precision(StrEnum):
    """The values of MODEL.PRECISION (see the module docstring)."""

    float32 = "float32"
    bfloat16 = "bfloat16"  # autocast: bfloat16 convolutions and matmuls, float32 weights
    auto = "auto"  # bfloat16 on a CPU with native bfloat16 (AVX512-BF16, AMX), else float32


PRECISIONS = tuple(p.value for p in Precision)


class MemoryFormat(StrEnum):
    """The values of MODEL.MEMORY_FORMAT (see the module docstring)."""

    contiguous = "contiguous"
    channels_last = "channels_last"
    auto = "auto"


def cpu_has_native_bfloat16() -> bool:
    """True on a CPU with bfloat16 instructions (AVX512-BF16, or AMX tiles with AMX-BF16), unless
    the environment variable DETECTOR_CPU_BFLOAT16 (0 or 1) says otherwise."""
    forced = os.environ.get(NATIVE_BFLOAT16_ENV, "")
    if forced not in ("", "0", "1"):
        raise ValueError(f"{NATIVE_BFLOAT16_ENV} must be 0 or 1, got {forced!r}")
    return cpu_flags_have_bfloat16() if forced == "" else forced == "1"


@functools.cache
def cpu_flags_have_bfloat16() -> bool:
    """What the CPU itself reports: AVX512-BF16, or AMX tiles (which come with AMX-BF16)."""
    cpu: Any = torch.cpu  # the feature queries are private helpers of torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype MODEL.PRECISION `precision` asks for on `device` (None: float32)."""
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto":
        native = torch.device(device).type == "cpu" and cpu_has_native_bfloat16()
        return torch.bfloat16 if native else None
    raise ValueError(f"MODEL.PRECISION must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for `precision` on `device`, or no context at all for float32 (an autocast with
    enabled=False would switch off an enclosing one, e.g. the trainer's SOLVER.AMP)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def torch_memory_format(memory_format: str, precision: str) -> torch.memory_format:
    """The layout MODEL.MEMORY_FORMAT `memory_format` asks for with MODEL.PRECISION `precision`
    (on the CPU, where `auto` precision is decided)."""
    if memory_format == "channels_last":
        return torch.channels_last
    if memory_format == "contiguous":
        return torch.contiguous_format
    if memory_format == "auto":
        reduced = autocast_dtype(precision, "cpu") is not None
        return torch.channels_last if reduced else torch.contiguous_format
    names = ", ".join(m.value for m in MemoryFormat)
    raise ValueError(f"MODEL.MEMORY_FORMAT must be one of {names}, got {memory_format!r}")


def describe(precision: str, memory_format: str, device: torch.device | str) -> str:
    """One line for the logs: what MODEL.PRECISION / MODEL.MEMORY_FORMAT resolve to on `device`,
    e.g. "bfloat16 autocast, channels-last (MODEL.PRECISION auto: the CPU has native bfloat16)"."""
    dtype = autocast_dtype(precision, device)
    what = "float32" if dtype is None else "bfloat16 autocast"
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        layout = torch_memory_format(memory_format, precision)
        what += ", channels-last" if layout == torch.channels_last else ", NCHW"
    if precision != "auto":
        return f"{what} (MODEL.PRECISION {precision})"
    if not on_cpu:
        return f"{what} (MODEL.PRECISION auto: float32 off the CPU; SOLVER.AMP for mixed precision)"
    has = "has" if cpu_has_native_bfloat16() else "has no"
    return f"{what} (MODEL.PRECISION auto: the CPU {has} native bfloat16)"
