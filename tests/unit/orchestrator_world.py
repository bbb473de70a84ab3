"""A world for the orchestrator's unit tests: the real Orchestrator with a fake peer, a
fake publisher, a manual clock and a real SQLite store in tmp_path."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.peer import RequestTimeout
from protocols import Message, make_header
from protocols.base import Body
from protocols.command import (
    CommandSubmit,
    CommandType,
    SessionCreate,
    SessionCreated,
)
from protocols.peer import Ack, PeerInfo, PeerKind, RegistryList, RegistryListReply
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskDispatched,
    TaskEnqueue,
    TaskResult,
    TaskResultAck,
    TaskSpec,
)
from services.orchestrator.service import Orchestrator
from services.orchestrator.store import Store

class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakePeer:
    name = "orchestrator"

    def __init__(self):
        self.sent: list[tuple[str, Body]] = []
        self.requests: list[tuple[str, Body]] = []
        self.tasks: list[asyncio.Task] = []
        self.alive_agents: list[str] = []
        self.agent_infos: dict[str, PeerInfo] = {}  # registry entries beyond a bare name
        self.fail_requests = False

    def send(self, dst: str, body: Body, corr: str = "") -> str:
        self.sent.append((dst, body))
        return f"id-{len(self.sent)}"

    async def request(self, dst: str, body: Body, timeout: float | None = None) -> Message:
        self.requests.append((dst, body))
        if self.fail_requests:
            raise RequestTimeout(f"no reply from {dst}")
        if isinstance(body, RegistryList):
            reply: Body = RegistryListReply(hub_id="h", peers=[
                self.agent_infos.get(n) or PeerInfo(name=n, kind=PeerKind.AGENT)
                for n in self.alive_agents])
        else:
            reply = Ack(detail="queued")
        return Message(make_header(reply.TYPE, dst, self.name), reply)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    # -- test helpers --
    def enqueued(self) -> list[TaskSpec]:
        return [b.task for d, b in self.sent if d == "distributor"
                and isinstance(b, TaskEnqueue)]

    def sent_of(self, type_: type) -> list[tuple[str, Body]]:
        return [(d, b) for d, b in self.sent if isinstance(b, type_)]


class FakeEvents:
    def __init__(self):
        self.published: list[tuple[str, Body]] = []

    def publish(self, topic: str, body: Body) -> None:
        self.published.append((topic, body))

    def topics(self) -> list[str]:
        return [t for t, _ in self.published]


class World:
    def __init__(self, tmp_path, **orchestrator):
        self.config = SystemConfig()
        self.config.orchestrator.isolate_worktrees = False
        self.config.orchestrator.retry_backoff = 1.0
        for key, value in orchestrator.items():
            setattr(self.config.orchestrator, key, value)
        self.clock = Clock()
        self.store = Store(str(tmp_path / "state.db"), clock=self.clock)
        self.peer = FakePeer()
        self.events = FakeEvents()
        self.registry = CollectorRegistry()
        self.repo = str(tmp_path)
        self.orch = Orchestrator(self.config, self.store, self.peer, self.events, self.registry,
                                 clock=self.clock)

    async def settle(self) -> None:
        """Let every spawned enqueue finish; delayed re-schedules are left sleeping."""
        for _ in range(10):
            pending = [t for t in self.peer.tasks if not t.done()
                       and t.get_coro().__name__ != "_schedule_after"]
            if not pending:
                return
            await asyncio.gather(*pending)

    def close(self) -> None:
        for t in self.peer.tasks:
            t.cancel()

    def msg(self, body: Body, src: str = "agent-1") -> Message:
        return Message(make_header(body.TYPE, src, "orchestrator"), body)

    async def create(self, session_id: str = "s1", text: str = "fix the bug\nin detail",
                     priority: int = 0, timeout_s: float | None = None) -> str:
        cmd = CommandSubmit(text=text, repo=self.repo, priority=priority, timeout_s=timeout_s)
        reply = await self.orch.on_session_create(self.msg(SessionCreate(
            session_id=session_id, command=cmd, type=CommandType.RUN,
            classification="given"), src="commands"))
        assert reply == SessionCreated(session_id=session_id)
        await self.settle()
        [task] = self.store.tasks(session_id)
        return task.id

    def task(self, task_id: str):
        return self.store.task(task_id)

    async def dispatch(self, task_id: str, agent: str = "agent-1") -> None:
        t = self.task(task_id)
        await self.orch.on_dispatched(self.msg(TaskDispatched(
            task_id=task_id, attempt_id=t.attempt_id, agent_id=agent), src="distributor"))

    async def accept(self, task_id: str, agent: str = "agent-1") -> None:
        t = self.task(task_id)
        await self.orch.on_accepted(self.msg(TaskAccepted(
            task_id=task_id, attempt_id=t.attempt_id, agent_id=agent), src=agent))

    async def run(self, task_id: str, agent: str = "agent-1") -> None:
        await self.dispatch(task_id, agent)
        await self.accept(task_id, agent)

    async def result(self, task_id: str, outcome: Outcome = Outcome.SUCCEEDED,
                     agent: str = "agent-1", attempt_id: str | None = None,
                     **kw: Any) -> TaskResultAck:
        t = self.task(task_id)
        ack = await self.orch.on_result(self.msg(TaskResult(
            session_id=t.session_id, task_id=task_id, attempt_id=attempt_id or t.attempt_id,
            agent_id=agent, outcome=outcome, **kw), src=agent))
        await self.settle()
        return ack

    def metric(self, name: str, **labels) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def scenario(tmp_path, coro_fn, **orchestrator):
    """Run ``coro_fn(world)`` on a fresh loop."""
    async def main():
        w = World(tmp_path, **orchestrator)
        try:
            await coro_fn(w)
        finally:
            w.close()
            w.store.close()
    asyncio.run(main())


def _task_history(w: World, session_id: str, task_id: str) -> list[str]:
    return [e["to_state"] for e in w.store.history(session_id)
            if e["task_id"] == task_id and e["kind"] == "task"]


