"""Loads the compiled library `detector._C`, which registers `torch.ops.detector.*`, and gives
typed forms of the `torch.library` registration calls that the op modules use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, cast

import torch
from torch import Tensor

try:
    from detector import _C  # noqa: F401  # pyright: ignore[reportUnusedImport]
except ImportError as error:  # pragma: no cover - depends on the build
    raise ImportError(
        "detector: the compiled op library detector._C is missing or broken "
        f"({error}). Build it with `make build` (or `pip install --no-build-isolation -e .`) "
        "from the repository root."
    ) from error

#: CUDA version the ops were compiled against, or -1 when the library has no CUDA kernels.
CUDA_VERSION: int = torch.ops.detector._cuda_version()

_Function = TypeVar("_Function", bound=Callable[..., object])
_Saved = TypeVar("_Saved", bound=tuple[Tensor | None, ...], covariant=True)

#: `torch._check` (a documented API despite its underscore): the shape checks of fake kernels.
torch_check = torch._check  # pyright: ignore[reportPrivateUsage]


def register_fake(qualname: str) -> Callable[[_Function], _Function]:
    """`@torch.library.register_fake(qualname)`: registers the decorated function as the op's
    fake (meta) kernel and returns it unchanged. The registration itself happens when the
    decorator is applied, so it is attributed to the decorated function's module."""
    decorator = torch.library.register_fake(qualname)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return cast("Callable[[_Function], _Function]", decorator)


def register_autograd(
    qualname: str,
    backward: Callable[..., object],
    *,
    setup_context: Callable[..., None],
) -> None:
    """`torch.library.register_autograd`: `setup_context(ctx, inputs, output)` saves what
    `backward(ctx, *grads)` needs; `backward` returns one gradient (or None) per input."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)  # pyright: ignore[reportUnknownMemberType]


class AutogradContext(Protocol[_Saved]):
    """The `ctx` that `register_autograd` passes to `setup_context` and `backward`: `_Saved` is
    the tuple of tensors that `setup_context` saves (None where it saves None). An op's context
    type adds the attributes its `setup_context` sets."""

    @property
    def saved_tensors(self) -> _Saved: ...

    @property
    def needs_input_grad(self) -> tuple[bool, ...]: ...

    def save_for_backward(self, *tensors: Tensor | None) -> None: ...
