"""Identifiers of sessions, tasks and attempts: unique, and in the order they were made.

``prefix-TTTTTTTTTTTRRRRRRRR``: the time in milliseconds (11 hex digits, so ids sort by
when they were made) then 32 random bits. New rows of the state database then land at
the right edge of every index that holds their ids (sessions, tasks, attempts and each
session's history), so a transaction of many new sessions dirties a few pages, not a page
per row per index."""

from __future__ import annotations

import os
import time


def ordered_id(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000):011x}{os.urandom(4).hex()}"
