"""Placeholder: benchmark cases for this op are being written."""

from benchmarks.timing import Case


def cases(device: str) -> list[Case]:
    return []
