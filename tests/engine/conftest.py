"""Engine tests configure the 'detector' logger (launch.train does); restore it after each test."""

import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_detector_logger():
    logger = logging.getLogger("detector")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _one_thread():
    """Toy models are tiny: one intra-op thread is many times faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
