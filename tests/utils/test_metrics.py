"""Metrics helpers: smoothing, flattening of evaluation results, JSON lines, logger set-up."""

import contextlib
import json
import logging
import math

import torch

from detector.utils.logger import setup_logger
from detector.utils.metrics import JSONWriter, SmoothedValue, flatten_dict


def test_smoothed_value():
    s = SmoothedValue(window=3)
    for v in (1.0, 10.0, 2.0, 3.0):
        s.update(v)
    assert s.median == 3.0 and s.avg == 5.0 and s.global_avg == 4.0 and s.latest == 3.0
    assert math.isnan(SmoothedValue().median)


def test_flatten_dict():
    results = {"bbox": {"AP": 0.3, "AP50": torch.tensor(0.5)}, "name": "x", "n": 2, "ok": True}
    assert flatten_dict(results) == {"bbox/AP": 0.3, "bbox/AP50": 0.5, "n": 2.0}


def test_json_writer_appends_and_writes_non_finite_as_strings(tmp_path):
    path = tmp_path / "metrics.jsonl"
    w = JSONWriter(path)
    w.write(1, {"loss": 0.5})
    w.close()
    w = JSONWriter(path)  # a resumed run appends
    w.write(2, {"loss": float("inf"), "x": float("nan")})
    w.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": "inf", "x": "nan"}]


def test_setup_logger_rank0_file_and_other_ranks(tmp_path):
    logger = logging.getLogger("detector")
    saved = list(logger.handlers), logger.level, logger.propagate
    try:
        setup_logger(tmp_path, rank=0)
        setup_logger(tmp_path, rank=0)  # idempotent: no duplicated lines
        logging.getLogger("detector.engine.x").info("hello")
        for h in logger.handlers:
            h.flush()
        assert (tmp_path / "log.txt").read_text().count("hello") == 1
        setup_logger(tmp_path / "r1", rank=1)
        assert logger.level == logging.WARNING and not (tmp_path / "r1" / "log.txt").exists()
    finally:
        for h in list(logger.handlers):
            if h not in saved[0]:
                logger.removeHandler(h)
                h.close()
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def test_a_full_disk_under_log_txt_is_one_line_on_stderr(tmp_path, capsys):
    logger = logging.getLogger("detector")
    saved = list(logger.handlers), logger.level, logger.propagate
    try:
        setup_logger(tmp_path, rank=0)
        log_file = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))
        log_file.stream = open("/dev/full", "w")  # every write: ENOSPC  # noqa: SIM115
        for _ in range(3):
            logging.getLogger("detector.engine.x").info("hello")
        err = capsys.readouterr().err
        assert err.count(f"cannot write {tmp_path / 'log.txt'} (No space left on device)") == 1
        assert "Traceback" not in err and err.count("hello") == 3  # the console goes on
    finally:
        for handler in list(logger.handlers):
            if handler not in saved[0]:
                logger.removeHandler(handler)
                with contextlib.suppress(OSError):  # /dev/full refuses the last flush too
                    handler.close()
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
