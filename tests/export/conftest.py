"""Fixtures of the export tests: a tiny Mask R-CNN saved by the engine's Checkpointer."""

from __future__ import annotations

import pytest

from tests.export.tiny_model import TinyRun, make_tiny_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_mask_rcnn"))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
