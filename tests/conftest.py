"""Test-wide fixtures and markers: `cuda` tests skip without a GPU, data tests without the data."""

import logging
import os
from pathlib import Path

import pytest
import torch

from tests.shared_datasets import register_shared_datasets

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
register_shared_datasets()  # the small real datasets by name (coco_sample6, bccd_*, ...)
# MODEL.PRECISION auto (the default) computes in bfloat16 on a CPU with native bfloat16: the suite
# computes in float32 on every CPU (its subprocesses too) unless DETECTOR_CPU_BFLOAT16 is set, so
# that results do not depend on which CPU CI lands on. The bfloat16 paths are tested by asking for
# them (MODEL.PRECISION bfloat16) or by forcing the detection (tests/modeling/test_precision.py).
os.environ.setdefault("DETECTOR_CPU_BFLOAT16", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """The real datasets of ../shared/data; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


def _intra_op_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is many times faster on a busy machine."""
    yield from _intra_op_threads(1)


@pytest.fixture
def two_threads():
    """Tests of what happens on the second intra-op thread."""
    yield from _intra_op_threads(2)


@pytest.fixture
def restore_detector_logger():
    """Training and the tools configure the 'detector' logger; restore it after the test."""
    logger = logging.getLogger("detector")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    logger.propagate = propagate
