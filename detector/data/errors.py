"""The error raised for a dataset that cannot be read: a missing file, a malformed annotation."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset file or annotation that cannot be used; the message names the file and the
    image or annotation id, and says how to fix it."""
