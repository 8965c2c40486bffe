"""Type guards for values of unknown shape (parsed JSON or YAML, user input): after the check a
strict type checker sees a list or dict of `Any` rather than of unknown items."""

from __future__ import annotations

from typing import Any, TypeGuard

__all__ = ["is_dict", "is_list", "is_tuple"]


def is_list(value: Any) -> TypeGuard[list[Any]]:
    """`isinstance(value, list)`."""
    return isinstance(value, list)


def is_dict(value: Any) -> TypeGuard[dict[Any, Any]]:
    """`isinstance(value, dict)`."""
    return isinstance(value, dict)


def is_tuple(value: Any) -> TypeGuard[tuple[Any, ...]]:
    """`isinstance(value, tuple)`."""
    return isinstance(value, tuple)
