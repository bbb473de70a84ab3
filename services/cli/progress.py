"""Progress on long waits: a live bar on a terminal (rich), and a plain line per change
everywhere else (a pipe, a log, CI), so scripts and logs read the same as before."""

from __future__ import annotations

import sys
import time
from typing import IO


def _terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Counter:
    """``done`` of ``total`` things, with a short detail ("3 succeeded, 1 failed")."""

    def __init__(self, what: str, total: int, stream: IO[str] | None = None,
                 live: bool | None = None):
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self._bar = None
        self._shown: tuple[int, str] | None = None
        if live if live is not None else _terminal(self.stream):
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn)

            console = Console(file=self.stream, force_terminal=True)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), console=console)
            self._task = self._bar.add_task(what, total=total, detail="")
            self._bar.start()

    def update(self, done: int, detail: str = "") -> None:
        if (done, detail) == self._shown:
            return
        self._shown = (done, detail)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, detail=detail)
            return
        print(f"{time.strftime('%H:%M:%S')} {done}/{self.total} {self.what}"
              + (f" ({detail})" if detail else ""), file=self.stream, flush=True)

    def close(self, done: int | None = None, detail: str = "") -> None:
        """Stop the bar, showing ``done`` last; a line is not repeated (the caller says how
        it ended)."""
        if self._bar is not None:
            if done is not None:
                self._bar.update(self._task, completed=done, detail=detail)
            self._bar.stop()
            self._bar = None

