"""What every executor gets and gives back.

The agent wraps ``Executor.run`` in the task timeout and cancels it on ``task.cancel``;
an executor must therefore stop everything it started (the whole process group) when
cancelled, in a ``finally``. What it has collected so far stays on the ``RunContext``,
so a timed-out or cancelled attempt still reports its partial output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from protocols.task import Outcome, TaskSpec


def watch_children_by_pidfd() -> bool:
    """Have asyncio learn that a child process ended through a pidfd (Linux 5.3+), not
    with a thread of its own per child, as Python 3.11's default watcher does (a thread
    started and joined for every command an agent runs). Python 3.12 does this by itself.
    Call before the event loop starts; returns whether it is in use."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a sandbox that forbids the call
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    return True


ProgressFn = Callable[[str, str, dict[str, Any]], None]

#: characters of stdout/stderr kept per attempt (the tail)
TAIL_CHARS = 16_000


class Tail:
    """The last ``limit`` characters of a stream."""

    def __init__(self, limit: int = TAIL_CHARS):
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.total = 0

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        self.total += len(text)
        if self._size > 2 * self.limit:
            self._compact()

    def _compact(self) -> None:
        joined = "".join(self._parts)[-self.limit:]
        self._parts, self._size = [joined], len(joined)

    def text(self) -> str:
        self._compact()
        return self._parts[0] if self._parts else ""


@dataclass
class RunContext:
    spec: TaskSpec
    agent_id: str
    progress: ProgressFn
    stdout: Tail = field(default_factory=Tail)
    stderr: Tail = field(default_factory=Tail)
    data: dict[str, Any] = field(default_factory=dict)
    pgid: int | None = None  # process group of the child, once started
    #: where the repository comes from (services.agent.code.CodeSource); None: in place
    code: Any = None
    #: a request to another peer over the bus (``Peer.request``); None outside an agent
    ask: Any = None
    #: the work's result as soon as it has one (its processes ended by themselves), kept
    #: when the attempt is stopped after (cancelled, timed out) while the executor still
    #: tidies up or before the loop saw the exit: the work is done, so this, not
    #: "interrupted", is the attempt's result
    finished: ExecutionResult | None = None


@dataclass
class ExecutionResult:
    outcome: Outcome
    exit_code: int | None = None
    error: str = ""


class Executor(Protocol):
    name: str

    async def run(self, ctx: RunContext) -> ExecutionResult: ...


def exited(pid: int) -> bool:
    """Whether child ``pid`` has ended, looked at without reaping it (asyncio's child
    watcher still collects its status)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


async def settle(coro: Any) -> Any:
    """Await ``coro`` to its end even if cancelled meanwhile; a cancel is raised after."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def kill_group(pgid: int | None, sig: int = signal.SIGKILL) -> None:
    if pgid is None:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
