"""Session, task and attempt ids: unique, and sorted by when they were made."""

from __future__ import annotations

import re
import time

import pytest

from libs.ids import ordered_id

pytestmark = pytest.mark.timeout(30)


def test_ids_are_unique_and_sort_by_when_they_were_made():
    first = [ordered_id("task") for _ in range(20_000)]
    assert len(set(first)) == len(first)
    assert all(re.fullmatch(r"task-[0-9a-f]{19}", i) for i in first[:100])
    stamp = int(first[-1][5:16], 16)
    deadline = time.monotonic() + 5
    while int(time.time() * 1000) <= stamp and time.monotonic() < deadline:
        time.sleep(0.001)  # wait-ok: the next millisecond, for an id made after all of them
    later = ordered_id("task")
    assert later > max(first)
    assert abs(stamp / 1000 - time.time()) < 5  # the time it holds is the real time
