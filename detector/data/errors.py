"""The error raised for a dataset that cannot be read: a missing file, a malformed annotation."""

from __future__ import annotations

import re

__all__ = ["DatasetError"]

# How torch.utils.data re-raises an error of a DataLoader worker in the main process: the class
# called with "Caught <name> in DataLoader worker process <k>.\nOriginal Traceback ...\n<type>: msg"
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\n", re.ASCII)
_LAST_LINE = re.compile(r"^[\w.]*DatasetError: (.*)$", re.MULTILINE)


class DatasetError(ValueError):
    """A dataset file or annotation that cannot be used; the message names the file and the
    image or annotation id, and says how to fix it.

    Re-raised by a DataLoader worker, it keeps the one-line message of the worker's error; the
    worker's traceback is in `worker_traceback`."""

    def __init__(self, message: str = "") -> None:
        self.worker_traceback = ""
        found = _LAST_LINE.findall(message) if _WORKER_WRAPPER.match(message) else []
        if found:
            self.worker_traceback, message = message, found[-1]
        super().__init__(message)
