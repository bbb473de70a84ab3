"""A task's command as a child process: in a process group of its own, its output read
while it runs, and over when the process itself exits.

asyncio's own ``Process.wait()`` returns only once the pipes are closed as well, and a
child the command left running (a server started in the background, a stray watcher)
may hold them open for as long as it lives: the attempt would wait for it, up to its
timeout. Here the command's exit is its end: what it left in its group is killed, what
is still in the pipes is read for up to ``DRAIN_SECONDS``, and a process that escaped the
group (``setsid``) and still holds them is no longer waited for (the agent's controller
kills such leftovers by the agent's token).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Any, Awaitable

from services.agent.executors.base import exited, kill_group

#: seconds to read what a command wrote before it exited, once it has
DRAIN_SECONDS = 1.0
#: seconds between SIGTERM and SIGKILL when stopping a command
GRACE_SECONDS = 2.0
#: bytes a pipe's reader buffers (asyncio's default)
_LIMIT = 2 ** 16


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for a child's pipes, which also says when the process exited."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop):
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    transport: asyncio.SubprocessTransport
    exit_seen: asyncio.Event  # the loop has seen the process exit

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self.proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self.proc.stderr

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def ended(self) -> bool:
        """Whether the process has exited, even if the loop has not seen it yet."""
        return self.exit_seen.is_set() or exited(self.pid)

    async def run(self, readers: list[Awaitable[Any]]) -> int:
        """Its exit code, once it has exited and ``readers`` have read what it wrote
        (see the module's docstring). Cancelled: the readers stop; nothing is signalled."""
        reading = asyncio.gather(*readers)
        try:
            await self.exit_seen.wait()
            kill_group(self.pid)  # what it left running in its group ends with it
            try:
                await asyncio.wait_for(asyncio.shield(reading), DRAIN_SECONDS)
            except asyncio.TimeoutError:
                pass  # held open by a process outside its group: not waited for
        finally:
            if not reading.done():
                reading.cancel()
        code = self.returncode
        assert code is not None
        return code

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM to its group, SIGKILL after ``grace`` seconds (at once if it has
        exited: to what it left in its group)."""
        if not self.exit_seen.is_set():
            kill_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exit_seen.wait()), grace)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        kill_group(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Let go of its pipes (a process outside its group may still hold the other end)."""
        self.transport.close()


async def start(argv: list[str], cwd: str | None, env: dict[str, str] | None) -> Child:
    """Start ``argv`` in a session (and process group) of its own, stdin from /dev/null,
    stdout and stderr piped. Raises OSError if it cannot be started."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _Protocol(_LIMIT, loop), *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, env=env)
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    return Child(proc, transport, protocol.exited)
