"""detector.ops.denormals: flush-to-zero on the caller and on every intra-op thread, restored on
exit; and the trainer sets it while training (SOLVER.FLUSH_DENORMALS)."""

import pytest
import torch

from detector.engine import HookBase
from detector.ops.denormals import flush_denormals, flush_denormals_enabled
from tests.engine.test_trainer import _trainer

DENORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def _denormal_results() -> int:
    """How many of 4M products x * 1 stay denormal (an elementwise op split across threads)."""
    x = torch.full((4_000_000,), DENORMAL)
    return int((x * 1.0).count_nonzero())


def test_every_thread_flushes_inside_the_block_and_none_after(two_threads):
    if not torch.ops.detector._set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero flags")
    assert _denormal_results() == 4_000_000
    with flush_denormals():
        assert flush_denormals_enabled()
        # torch.set_flush_denormal alone would leave the second thread's half (2M) denormal
        assert _denormal_results() == 0
    assert not flush_denormals_enabled()
    assert _denormal_results() == 4_000_000


def test_disabled_block_and_nested_blocks_keep_the_outer_state():
    if not torch.ops.detector._set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero flags")
    with flush_denormals(enabled=False):
        assert not flush_denormals_enabled()
    with flush_denormals():
        with flush_denormals():
            pass
        assert flush_denormals_enabled()  # the inner block restored "on", not "off"
    assert not flush_denormals_enabled()


class _Record(HookBase):
    def __init__(self) -> None:
        self.states: list[bool] = []

    def after_step(self, trainer) -> None:
        self.states.append(flush_denormals_enabled())


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_flushes_while_training_as_configured(tmp_path, enabled):
    if not torch.ops.detector._set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero flags")
    record = _Record()
    trainer = _trainer(tmp_path, solver={"FLUSH_DENORMALS": enabled}, hooks=[record])
    trainer.train()
    assert record.states == [enabled] * 6
    assert not flush_denormals_enabled()
