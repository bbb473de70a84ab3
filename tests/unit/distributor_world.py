"""A world for the distributor's unit tests: the real Distributor with a fake peer (it
records assignments and can refuse or stay silent), a manual clock, and helpers to make
task specs and agent slots."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.peer import RequestFailed, RequestTimeout
from protocols import Message, make_header
from protocols.base import Body
from protocols.peer import PeerInfo, RegistryList, RegistryListReply
from protocols.task import (
    AgentStats,
    AgentStatsReply,
    TaskAccepted,
    TaskAssign,
    TaskEnqueue,
    TaskReleased,
    TaskSpec,
)
from services.distributor.choice import AgentSlot
from services.distributor.service import Distributor


def spec(attempt: str = "a1", role: str = "worker", caps: list[str] | None = None,
         priority: int = 0, owner: str = "orchestrator") -> TaskSpec:
    return TaskSpec(task_id=f"t-{attempt}", attempt_id=attempt, session_id="s1", owner=owner,
                    role=role, capabilities=caps or [], priority=priority, prompt="do it")


def slot(name: str, role: str = "worker", caps: tuple[str, ...] = (), capacity: int = 1,
         load: int = 0, completed: int = 0, busy: float = 0.0) -> AgentSlot:
    s = AgentSlot(name, role, set(caps), capacity)
    s.inflight = {f"{name}-x{i}" for i in range(load)}
    s.completed, s.busy_seconds = completed, busy
    return s


class FakePeer:
    name = "distributor"

    def __init__(self):
        self.sent: list[tuple[str, Body]] = []
        self.assigns: list[tuple[str, TaskSpec]] = []
        self.accepted: list[tuple[str, str]] = []  # (attempt, agent) of assignments taken
        self.refuse: set[str] = set()  # agents that answer busy
        self.silent: set[str] = set()  # agents that never answer
        #: agents whose attempts end before they answer: the answer is the release (the
        #: value: the agent the release names, its own name for an honest agent)
        self.ended: dict[str, str] = {}
        self.tasks: list[asyncio.Task] = []
        self.agents: list[PeerInfo] = []
        self.gate: asyncio.Event | None = None
        self.stats = AgentStatsReply()

    def send(self, dst: str, body: Body, corr: str = "") -> str:
        self.sent.append((dst, body))
        return "id"

    async def request(self, dst: str, body: Body, timeout: float | None = None) -> Message:
        if self.gate is not None:
            await self.gate.wait()  # lets a test act while the request is in flight
        if isinstance(body, RegistryList):
            reply: Body = RegistryListReply(hub_id="h", peers=self.agents)
            return Message(make_header(reply.TYPE, "hub", self.name), reply)
        if isinstance(body, AgentStats):
            return Message(make_header(self.stats.TYPE, dst, self.name), self.stats)
        assert isinstance(body, TaskAssign)
        self.assigns.append((dst, body.task))
        if dst in self.refuse:
            raise RequestFailed("busy", f"{dst} is at capacity")
        if dst in self.silent:
            raise RequestTimeout(f"no reply from {dst}")
        if dst in self.ended:
            released = TaskReleased(task_id=body.task.task_id, attempt_id=body.task.attempt_id,
                                    agent_id=self.ended[dst], outcome="succeeded",
                                    duration_s=0.01)
            return Message(make_header(released.TYPE, dst, self.name), released)
        reply = TaskAccepted(task_id=body.task.task_id, attempt_id=body.task.attempt_id,
                             agent_id=dst)
        self.accepted.append((body.task.attempt_id, dst))
        return Message(make_header(reply.TYPE, dst, self.name), reply)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        """Let every spawned assignment finish; delayed re-dispatches are left sleeping."""
        def pending():
            return [t for t in self.tasks if not t.done()
                    and t.get_coro().__name__ != "_dispatch_after"]
        quiet = 0
        while quiet < 2:  # dispatches run at the end of a turn: two quiet turns in a row
            await asyncio.sleep(0)  # wait-ok: one turn of the loop
            if pending():
                quiet = 0
                await asyncio.gather(*pending())
            else:
                quiet += 1

    def dispatched(self) -> list[tuple[str, str]]:
        return list(self.accepted)


class Clock:
    def __init__(self, now: float = 500.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, strategy: str = "load_balanced"):
        self.config = SystemConfig()
        self.config.distribution.strategy = strategy
        self.peer = FakePeer()
        self.registry = CollectorRegistry()
        self.clock = Clock()
        self.d = Distributor(self.config, self.peer, self.registry, clock=self.clock)

    def msg(self, body: Body) -> Message:
        return Message(make_header(body.TYPE, "orchestrator", "distributor"), body)

    async def enqueue(self, s: TaskSpec) -> None:
        assert await self.d.on_enqueue(self.msg(TaskEnqueue(task=s))) is None  # one-way
        await self.peer.settle()

    async def release(self, attempt: str, agent: str, outcome: str = "",
                      duration: float = 0.0) -> None:
        await self.d.on_released(self.msg(TaskReleased(
            task_id=f"t-{attempt}", attempt_id=attempt, agent_id=agent, outcome=outcome,
            duration_s=duration)))
        await self.peer.settle()

    def metric(self, name: str, **labels) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def run(coro_fn, strategy: str = "load_balanced") -> None:
    async def main():
        w = World(strategy)
        try:
            await coro_fn(w)
        finally:
            for t in w.peer.tasks:
                t.cancel()
    asyncio.run(main())
