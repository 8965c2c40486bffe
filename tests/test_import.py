import torch

import detector
from detector.ops import _library


def test_compiled_library_loads_and_reports_cuda_build() -> None:
    version = torch.ops.detector._cuda_version()
    assert version == _library.CUDA_VERSION
    # A CPU-only build reports -1; a CUDA build reports CUDA_VERSION (e.g. 13000 for 13.0).
    assert version == -1 or version >= 11000
    assert detector.__version__
