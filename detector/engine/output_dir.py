"""One training run per OUTPUT_DIR: an exclusive `fcntl.flock` on OUTPUT_DIR/.lock.

The lock is held for the whole run and released by the operating system when the process ends,
however it ends (even kill -9), so a stale lock never blocks a later run. The file holds the
owner's pid, which a refused run names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Generator
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputDirError", "lock_output_dir", "make_output_dir"]

LOCK_NAME = ".lock"

logger = logging.getLogger(__name__)


class OutputDirError(RuntimeError):
    """An OUTPUT_DIR that cannot be used: not writable, or in use by another run."""


def _not_writable(directory: Path, error: OSError) -> OutputDirError:
    return OutputDirError(
        f"OUTPUT_DIR folder {directory} is not writable ({error.strerror or error}); set "
        "OUTPUT_DIR to a folder this user can write to"
    )


def write_text_file(path: str | Path, text: str) -> None:
    """Writes an output file (config.yaml, ...); OutputDirError naming it when that fails (a full
    disk, a read-only folder), and no half-written file is left."""
    path = Path(path)
    try:
        path.write_text(text)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise OutputDirError(
            f"cannot write {path} ({e.strerror or e}); free disk space or set OUTPUT_DIR to a "
            "writable folder"
        ) from None


def make_output_dir(directory: str | Path) -> Path:
    """Creates `directory` (and its parents); OutputDirError naming it when that fails (a
    read-only file system, no permission, a file in the way)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _not_writable(directory, e) from None
    return directory


def _open_lock_file(directory: Path) -> int:
    make_output_dir(directory)
    try:
        return os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _not_writable(directory, e) from None


def _holder(fd: int) -> str:
    """The pid written by the run that holds the lock ('unknown pid' if it wrote none yet)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "unknown pid"


@contextlib.contextmanager
def lock_output_dir(directory: str | Path) -> Generator[None]:
    """Creates `directory` and holds its lock for the duration of the block.

    Raises:
        OutputDirError: the folder cannot be created or written, or another process (named by its
            pid) holds the lock.
    """
    directory = Path(directory)
    fd = _open_lock_file(directory)
    try:
        if _lock(fd, directory):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int, directory: Path) -> bool:
    """Takes the lock; False (with a warning) on a file system without locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
            logger.warning(
                "cannot lock OUTPUT_DIR %s (%s): nothing stops another run from using it",
                directory,
                e.strerror,
            )
            return False
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise OutputDirError(
            f"OUTPUT_DIR {directory} is in use by another training run ({_holder(fd)}, "
            f"lock file {directory / LOCK_NAME}); wait for it to end or set OUTPUT_DIR "
            "elsewhere"
        ) from None
    return True
