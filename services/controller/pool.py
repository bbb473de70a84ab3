"""Agent process pools: start the configured number of agents per role on this host,
restart any that die (with backoff), and stop them all, process group by process group."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from libs import proctrack
from libs.log import EventLogger, get_logger

#: seconds between SIGTERM and SIGKILL when stopping an agent
GRACE_SECONDS = 5.0
#: set in each agent process's environment, unique per start; its tasks inherit it
TOKEN_ENV = "CCAA_AGENT_TOKEN"
MAX_BACKOFF = 30.0


@dataclass
class Slot:
    role: str
    index: int
    name: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)
    token: str = ""  # CCAA_AGENT_TOKEN of the running process: marks its tasks' processes


#: an agent's log is rotated past this size, keeping this many old copies
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def rotate_log(path: str, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_BACKUPS) -> bool:
    """Copy-and-truncate ``path`` once it is past ``max_bytes`` (the agent keeps writing to
    the same file, opened for appending): NAME.1 is the newest old copy, NAME.KEEP the
    oldest. Whether it rotated."""
    try:
        if os.path.getsize(path) <= max_bytes:
            return False
    except OSError:
        return False
    for n in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
    shutil.copyfile(path, f"{path}.1")
    os.truncate(path, 0)
    return True


class AgentPool:
    def __init__(self, argv_for: Callable[[Slot], list[str]], log: EventLogger | None = None,
                 env: dict[str, str] | None = None, log_dir: str | None = None,
                 on_change: Callable[[str, Slot], None] | None = None):
        self.argv_for = argv_for
        self.log = log or get_logger("controller")
        self.env = env
        self.log_dir = log_dir
        self.on_change = on_change or (lambda event, slot: None)
        self.slots: dict[str, Slot] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False

    def resize(self, role: str, count: int, host: str) -> None:
        """Make the pool for ``role`` hold ``count`` agents (stops the extra ones)."""
        current = sorted((s for s in self.slots.values() if s.role == role), key=lambda s: s.index)
        for i in range(len(current), count):
            name = f"agent-{role}-{host}-{i + 1}"
            self.slots[name] = Slot(role, i + 1, name)
        for slot in current[count:]:
            self.slots.pop(slot.name)
            if slot.proc is not None and slot.proc.returncode is None:
                asyncio.ensure_future(self._terminate(slot))

    async def ensure(self) -> None:
        """Start every slot without a live process whose backoff has passed; rotate the
        agents' logs that grew too big."""
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if self.log_dir:
                try:
                    rotate_log(os.path.join(self.log_dir, f"{slot.name}.log"))
                except OSError as exc:
                    self.log.warning("agent.log_rotation_failed", agent=slot.name,
                                     error=str(exc))
            alive = slot.proc is not None and slot.proc.returncode is None
            if alive or now < slot.next_start or self._stopping:
                continue
            await self._start(slot)

    async def _start(self, slot: Slot) -> None:
        argv = self.argv_for(slot)
        out = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{slot.name}.log"), "ab")
        slot.token = uuid.uuid4().hex
        env = {**(self.env if self.env is not None else os.environ), TOKEN_ENV: slot.token}
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=out or asyncio.subprocess.DEVNULL, stderr=out or asyncio.subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        except OSError as exc:
            self.log.error("agent.spawn_failed", agent=slot.name, error=str(exc))
            slot.next_start = time.monotonic() + self._backoff(slot)
            return
        finally:
            if out is not None:
                out.close()
        slot.started_at = time.monotonic()
        self.log.info("agent.spawned", agent=slot.name, role=slot.role, pid=slot.proc.pid,
                      restarts=slot.restarts)
        self.on_change("spawned", slot)
        watcher = asyncio.ensure_future(self._watch(slot, slot.proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        _kill_group(proc.pid, signal.SIGKILL)  # whatever it left in its group
        slot.next_start = float("inf")  # not started again before its leftovers are gone
        await self._sweep(slot, slot.token)
        if self._stopping or self.slots.get(slot.name) is not slot:
            return
        slot.exits.append(code)
        slot.restarts += 1
        # a process that ran for a while earns a fresh backoff
        if time.monotonic() - slot.started_at > 60:
            slot.restarts = 1
        delay = self._backoff(slot)
        slot.next_start = time.monotonic() + delay
        self.log.warning("agent.exited", agent=slot.name, code=code, restart_in=round(delay, 2))
        self.on_change("exited", slot)
        await asyncio.sleep(delay)
        await self.ensure()

    @staticmethod
    def _backoff(slot: Slot) -> float:
        return min(MAX_BACKOFF, 0.5 * (2 ** max(0, slot.restarts - 1)))

    async def _terminate(self, slot: Slot) -> None:
        proc = slot.proc
        if proc is None or proc.returncode is not None:
            return
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), GRACE_SECONDS)
        except asyncio.TimeoutError:
            self.log.warning("agent.kill", agent=slot.name, pid=proc.pid)
        _kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()
        await self._sweep(slot, slot.token)
        self.on_change("stopped", slot)

    async def _sweep(self, slot: Slot, token: str) -> None:
        """Kill what the agent's tasks left running (their own process groups, a Claude
        Code run's tools), found by the agent's token, before it is started again: a
        killed agent's task is re-run elsewhere and must not also go on here."""
        left = await asyncio.to_thread(proctrack.find_by_env, TOKEN_ENV, token)
        if left:
            self.log.warning("agent.leftovers_killed", agent=slot.name,
                             pids=sorted(p.pid for p in left))
            await asyncio.to_thread(proctrack.stop, left, 0)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*(self._terminate(s) for s in self.slots.values()))
        for watcher in list(self._watchers):
            watcher.cancel()

    def memory_mb(self, slot: Slot) -> float:
        """Resident memory (MiB) of an agent and everything it started (its Claude Code
        runs)."""
        if slot.proc is None or slot.proc.returncode is not None:
            return 0.0
        return proctrack.tree_rss_mb(slot.proc.pid)

    async def enforce_memory(self, limit_mb: int) -> list[tuple[Slot, float]]:
        """Stop agents over ``limit_mb`` (they restart through the usual backoff; their
        running task is re-queued as a lost attempt). Returns (slot, MB) stopped."""
        over = [(s, mb) for s in self.live() if (mb := self.memory_mb(s)) > limit_mb]
        for slot, mb in over:
            self.log.warning("agent.memory_limit", agent=slot.name, rss_mb=round(mb, 1),
                             limit_mb=limit_mb)
            await self._terminate(slot)
        return over

    def live(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.proc is not None and s.proc.returncode is None]


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def agent_argv(python: str = sys.executable) -> list[str]:
    return [python, "-m", "services.agent"]
