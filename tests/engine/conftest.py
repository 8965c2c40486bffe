"""Engine tests configure the 'detector' logger (launch.train does); restore it after each test."""

import pytest


@pytest.fixture(autouse=True)
def _engine_isolation(restore_detector_logger, one_thread):
    """Every engine test: the 'detector' logger restored, one intra-op thread."""
    yield
