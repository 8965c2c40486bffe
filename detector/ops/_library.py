"""Loads the compiled library `detector._C`, which registers `torch.ops.detector.*`."""

import torch

try:
    from detector import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the build
    raise ImportError(
        "detector: the compiled op library detector._C is missing or broken "
        f"({error}). Build it with `make build` (or `pip install --no-build-isolation -e .`) "
        "from the repository root."
    ) from error

#: CUDA version the ops were compiled against, or -1 when the library has no CUDA kernels.
CUDA_VERSION: int = torch.ops.detector._cuda_version()
