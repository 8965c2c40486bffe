"""`run_tool`: how a tool's run ends (exit status, one line on stderr, distributed shutdown), and
the Trainer stopping its data iterator when training ends."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.engine import Trainer
from detector.engine.launch import run_tool
from detector.utils import comm
from tests.engine.toy import ToyModel, toy_batch, toy_cfg


@pytest.fixture
def shutdowns(monkeypatch) -> list[bool]:
    """Records each comm.shutdown(failed=...) call."""
    calls: list[bool] = []
    monkeypatch.setattr(comm, "shutdown", lambda *, failed=False: calls.append(failed))
    return calls


def test_success_returns_zero_and_shuts_down_after_a_barrier(shutdowns):
    assert run_tool(lambda: 0, (ValueError,)) == 0
    assert shutdowns == [False]


def test_user_error_is_one_line_and_status_1(shutdowns, capsys):
    def body() -> int:
        raise ValueError("DATASETS.TEST is empty: name the datasets to test on")

    assert run_tool(body, (ValueError,)) == 1
    err = capsys.readouterr().err
    assert err == "error: DATASETS.TEST is empty: name the datasets to test on\n"
    assert shutdowns == [True]


def test_key_error_prints_its_message_without_quotes(shutdowns, capsys):
    def body() -> int:
        raise KeyError("unknown dataset 'x'")

    assert run_tool(body, (KeyError,)) == 1
    assert capsys.readouterr().err == "error: unknown dataset 'x'\n"


def test_sigterm_gives_143_and_one_line_and_restores_the_handler(shutdowns, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def body() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the body")

    assert run_tool(body, (ValueError,)) == 143
    assert capsys.readouterr().err == "error: stopped by SIGTERM\n"
    assert shutdowns == [True]
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_gives_130(shutdowns, capsys):
    def body() -> int:
        raise KeyboardInterrupt

    assert run_tool(body, (ValueError,)) == 130
    assert capsys.readouterr().err == "error: interrupted (Ctrl-C)\n"
    assert shutdowns == [True]


def test_other_errors_propagate_after_the_shutdown(shutdowns):
    def body() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_tool(body, (ValueError,))
    assert shutdowns == [True]


def test_shutdown_without_a_process_group_is_a_no_op():
    comm.shutdown()
    comm.shutdown(failed=True)


@pytest.mark.parametrize("fail", [False, True])
def test_trainer_closes_its_data_iterator(tmp_path: Path, fail: bool):
    """The loader's generator is closed when training ends, by success or by an error."""
    closed: list[int] = []

    def factory(start_iter: int) -> Iterator:
        try:
            for i in range(start_iter, 100):
                images, targets = toy_batch(i)
                yield images, targets
        finally:
            closed.append(start_iter)

    model = ToyModel(dropout=0.0, jitter=False, nan_at_call=3 if fail else None)
    trainer = Trainer.from_config(
        toy_cfg(tmp_path), model=model, data_loader=factory, tensorboard=False, progress_bar=False
    )
    if fail:
        with pytest.raises(FloatingPointError):
            trainer.train()
    else:
        trainer.train()
    assert closed == [0]
