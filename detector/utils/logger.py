"""Logging set-up for a run: the console and OUTPUT_DIR/log.txt, on the main process only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_logger"]

_HANDLER_NAME = "detector.setup_logger"  # the name of the handlers setup_logger adds
_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class _LogFile(logging.FileHandler):
    """OUTPUT_DIR/log.txt, added by setup_logger. A failed write (a full disk, a read-only
    folder) is reported once, in one line on stderr, instead of the logging module's traceback
    for every record; the console keeps logging."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        sys.stderr.write(
            f"detector: cannot write {self.baseFilename} ({reason}); logging to the console only\n"
        )


_DATE = "%m/%d %H:%M:%S"


def setup_logger(
    output_dir: str | Path | None = None,
    *,
    rank: int = 0,
    name: str = "detector",
    filename: str = "log.txt",
    level: int = logging.INFO,
) -> logging.Logger:
    """Configures the `name` logger (the package's module loggers propagate to it).

    Rank 0 logs INFO to stderr and to `output_dir/filename` (appending, so a resumed run continues
    the same file); other ranks log only warnings and errors to stderr, so a multi-process run
    prints each message once. Calling it again replaces the handlers it added before.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level if rank == 0 else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
            handler.close()
    prefix = "" if rank == 0 else f"[rank {rank}] "
    formatter = logging.Formatter(prefix + _FORMAT, datefmt=_DATE)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    handlers: list[logging.Handler] = [console]
    if output_dir is not None and rank == 0:
        path = Path(output_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFile(path, mode="a")
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    for handler in handlers:
        handler.set_name(_HANDLER_NAME)
        logger.addHandler(handler)
    return logger
