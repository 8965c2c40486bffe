"""Fixtures of the export tests: a tiny Mask R-CNN saved by the engine's Checkpointer."""

from __future__ import annotations

import pytest
import torch

from tests.export.tiny_model import TinyRun, make_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_mask_rcnn"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
