"""Engine tests configure the 'detector' logger (launch.train does); restore it after each test."""

import logging

import pytest


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
