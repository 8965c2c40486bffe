"""Termination signals as exceptions (the tools), or as stop requests honoured between two training
iterations (the Trainer), so that a stopped run ends in order and loses nothing.

`signals_as_exceptions` turns SIGTERM (what torchrun and schedulers send) into `Interrupted` at
once. `StopRequests` only records the first SIGINT / SIGTERM / SIGUSR1 (SLURM's pre-emption warning
when the job is submitted with `--signal=USR1@SECONDS`); the training loop then finishes the
current iteration, writes a checkpoint and raises `Interrupted`. A second signal raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Generator, Sequence
from types import FrameType, TracebackType

__all__ = ["STOP_SIGNALS", "Interrupted", "StopRequests", "ignore_stop_signals"]

logger = logging.getLogger(__name__)

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(BaseException):
    """A termination signal turned into an exception, so that `finally` blocks run (data loader
    workers stopped, files flushed, the process group shut down) before the process exits.

    `str(e)` is the signal's name followed by `detail` (what was saved, how to go on)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} {detail}" if detail else name)
        self.signum = signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_as_exceptions(
    signums: Sequence[int] = (signal.SIGTERM,),
) -> Generator[None, None, None]:
    """Within the block, `signums` (SIGTERM: what torchrun and schedulers send) raise
    `Interrupted` in the main thread; the previous handlers come back afterwards."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: workers ignore Ctrl-C and SIGTERM / SIGUSR1 sent to the whole
    process group, and leave stopping to the main process (which shuts them down in order)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequests:
    """Within `with`, the first of `signums` is recorded in `signum` (and logged); the loop checks
    it between iterations. A second signal raises `Interrupted` at once. Outside the main thread
    (where Python cannot handle signals) nothing is installed."""

    def __init__(self, signums: Sequence[int] = STOP_SIGNALS) -> None:
        self.signums = tuple(signums)
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Interrupted(signum, "again: stopped at once, without a checkpoint")
        self.signum = signum
        logger.warning(
            "%s received: stopping after the current iteration with a checkpoint "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopRequests:
        if _in_main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signums}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._previous = {}
