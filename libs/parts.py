"""Cutting a sequence into parts that each fit one message."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def parts(items: Sequence[T], cost: Callable[[T], int], max_count: int,
          max_bytes: int) -> list[list[T]]:
    """``items`` in order, in parts of at most ``max_count`` items and ``max_bytes`` of
    ``cost`` (an item costing more than that makes a part of its own)."""
    out: list[list[T]] = []
    size = 0
    for item in items:
        c = cost(item)
        if not out or len(out[-1]) >= max_count or size + c > max_bytes:
            out.append([])
            size = 0
        out[-1].append(item)
        size += c
    return out
