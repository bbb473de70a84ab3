"""The distributor: strategies (pure), eligibility, capacity, queue, refusals, aging."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.peer import RequestFailed, RequestTimeout
from protocols import Message, make_header
from protocols.base import Body
from protocols.peer import Ack, PeerInfo, PeerKind, RegistryList, RegistryListReply
from protocols.task import TaskAccepted, TaskAssign, TaskDispatched, TaskEnqueue, TaskReleased, TaskSpec
from services.distributor.choice import AgentSlot, choose, eligible
from services.distributor.service import COOLDOWN_SECONDS, AGING_SECONDS, Distributor

pytestmark = pytest.mark.timeout(30)


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


# ---- choice: pure strategies ------------------------------------------------------------


def test_load_balanced_picks_the_least_loaded_by_ratio():
    agents = [slot("a", capacity=2, load=1), slot("b", capacity=4, load=1),
              slot("c", capacity=1, load=0)]
    assert choose("load_balanced", spec(), agents, 0).name == "c"
    agents[2].inflight.add("x")  # c is full now
    assert choose("load_balanced", spec(), agents, 0).name == "b"  # 1/4 < 1/2


def test_load_balanced_ties_break_by_name():
    agents = [slot("zed", capacity=2), slot("amy", capacity=2)]
    assert choose("load_balanced", spec(), agents, 5).name == "amy"


def test_round_robin_rotates_with_the_turn():
    agents = [slot("c", capacity=9), slot("a", capacity=9), slot("b", capacity=9)]
    picks = [choose("round_robin", spec(), agents, turn).name for turn in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_capability_based_picks_the_most_specific_agent():
    agents = [slot("generalist", caps=("python", "rust", "go", "docs")),
              slot("pythonista", caps=("python", "docs")),
              slot("exact", caps=("python",)),
              slot("wrong", caps=("rust",))]
    assert choose("capability_based", spec(caps=["python"]), agents, 0).name == "exact"
    # exact is busy: the next most specific
    agents[2].inflight.add("x")
    assert choose("capability_based", spec(caps=["python"]), agents, 0).name == "pythonista"


def test_performance_based_picks_the_fastest_mean():
    agents = [slot("slow", completed=2, busy=20.0), slot("fast", completed=4, busy=8.0),
              slot("medium", completed=1, busy=5.0)]
    assert choose("performance_based", spec(), agents, 0).name == "fast"


def test_role_and_capability_filtering_and_capacity():
    agents = [slot("arch", role="architect", caps=("python",)),
              slot("w-nocap", caps=("go",)),
              slot("w-full", caps=("python", "git"), capacity=1, load=1),
              slot("w-ok", caps=("python", "git", "docs"), capacity=2, load=1)]
    need = spec(caps=["python", "git"])
    assert [a.name for a in eligible(need, agents)] == ["w-ok"]
    for strategy in ("load_balanced", "round_robin", "capability_based", "performance_based"):
        assert choose(strategy, need, agents, 3).name == "w-ok"
    assert choose("load_balanced", spec(role="manager"), agents, 0) is None
    assert choose("load_balanced", spec(caps=["cobol"]), agents, 0) is None
    assert choose("round_robin", spec(), [], 0) is None


def test_zero_capacity_agent_is_never_chosen():
    assert choose("load_balanced", spec(), [slot("z", capacity=0)], 0) is None


# ---- the service with a fake peer -------------------------------------------------------


class FakePeer:
    name = "distributor"

    def __init__(self):
        self.sent: list[tuple[str, Body]] = []
        self.assigns: list[tuple[str, TaskSpec]] = []
        self.refuse: set[str] = set()  # agents that answer busy
        self.silent: set[str] = set()  # agents that never answer
        self.tasks: list[asyncio.Task] = []
        self.agents: list[PeerInfo] = []
        self.gate: asyncio.Event | None = None

    def send(self, dst: str, body: Body, corr: str = "") -> str:
        self.sent.append((dst, body))
        return "id"

    async def request(self, dst: str, body: Body, timeout: float | None = None) -> Message:
        if self.gate is not None:
            await self.gate.wait()  # lets a test act while the request is in flight
        if isinstance(body, RegistryList):
            reply: Body = RegistryListReply(hub_id="h", peers=self.agents)
            return Message(make_header(reply.TYPE, "hub", self.name), reply)
        assert isinstance(body, TaskAssign)
        self.assigns.append((dst, body.task))
        if dst in self.refuse:
            raise RequestFailed("busy", f"{dst} is at capacity")
        if dst in self.silent:
            raise RequestTimeout(f"no reply from {dst}")
        reply = TaskAccepted(task_id=body.task.task_id, attempt_id=body.task.attempt_id,
                             agent_id=dst)
        return Message(make_header(reply.TYPE, dst, self.name), reply)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        while any(not t.done() for t in self.tasks):
            await asyncio.gather(*[t for t in self.tasks if not t.done()])

    def dispatched(self) -> list[tuple[str, str]]:
        return [(b.attempt_id, b.agent_id) for d, b in self.sent if isinstance(b, TaskDispatched)]


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

    async def enqueue(self, s: TaskSpec) -> Ack:
        ack = await self.d.on_enqueue(self.msg(TaskEnqueue(task=s)))
        await self.peer.settle()
        return ack

    async def release(self, attempt: str, agent: str) -> None:
        await self.d.on_released(self.msg(TaskReleased(task_id=f"t-{attempt}",
                                                       attempt_id=attempt, agent_id=agent)))
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


def test_enqueue_assigns_and_tells_the_owner():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", ["python"], 2)
        ack = await w.enqueue(spec("a1", caps=["python"], owner="orch-2"))
        assert ack == Ack(detail="queued")
        assert [(d, s.attempt_id) for d, s in w.peer.assigns] == [("agent-1", "a1")]
        assert w.peer.sent == [("orch-2", TaskDispatched(task_id="t-a1", attempt_id="a1",
                                                         agent_id="agent-1"))]
        assert w.d.agents["agent-1"].inflight == {"a1"}
        assert w.d.queue == {}
        assert w.metric("ccaa_tasks_assigned_total", strategy="load_balanced") == 1
        assert w.metric("ccaa_queue_depth") == 0
    run(go)


def test_no_eligible_agent_keeps_the_task_queued():
    async def go(w: World):
        w.d.agent_up("arch-1", "architect", [], 1)
        await w.enqueue(spec("a1", role="worker"))
        assert w.peer.assigns == [] and set(w.d.queue) == {"a1"}
        assert w.metric("ccaa_queue_depth") == 1
        w.d.agent_up("w-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "w-1")]
    run(go)


def test_enqueue_dedupes_by_attempt_id():
    async def go(w: World):
        await w.enqueue(spec("a1"))  # no agents: stays queued
        assert await w.enqueue(spec("a1")) == Ack(detail="already queued")
        assert len(w.d.queue) == 1
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        # now in flight on agent-1: a resend is still a duplicate
        assert await w.enqueue(spec("a1")) == Ack(detail="already queued")
        assert len(w.peer.assigns) == 1 and w.d.queue == {}
        # a new attempt of the same task is not
        assert await w.enqueue(spec("a2")) == Ack(detail="queued")
    run(go)


def test_capacity_is_respected_and_release_dispatches_the_next():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 2)
        for a in ("a1", "a2", "a3"):
            await w.enqueue(spec(a))
        assert [s.attempt_id for _, s in w.peer.assigns] == ["a1", "a2"]
        assert set(w.d.queue) == {"a3"}
        assert w.metric("ccaa_queue_depth") == 1
        w.clock.now += 4.0
        await w.release("a1", "agent-1")
        assert [s.attempt_id for _, s in w.peer.assigns] == ["a1", "a2", "a3"]
        slot_ = w.d.agents["agent-1"]
        assert slot_.inflight == {"a2", "a3"}
        assert slot_.completed == 1 and slot_.busy_seconds == pytest.approx(4.0)
        assert w.d.queue == {}
    run(go)


def test_release_of_an_unknown_attempt_or_agent_is_harmless():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        await w.enqueue(spec("a1"))
        await w.release("zzz", "agent-1")
        await w.release("a1", "agent-9")
        assert w.d.agents["agent-1"].inflight == {"a1"}
        assert w.d.agents["agent-1"].completed == 0
    run(go)


def test_release_of_a_still_queued_attempt_drops_it():
    async def go(w: World):
        await w.enqueue(spec("a1"))  # no agents
        await w.release("a1", "")
        assert w.d.queue == {}
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.assigns == []
    run(go)


def test_refused_assignment_puts_the_task_back_in_the_queue():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.refuse.add("agent-1")
        await w.enqueue(spec("a1", priority=3))
        assert set(w.d.queue) == {"a1"}
        assert w.d.queue["a1"].spec.priority == 3
        assert w.d.agents["agent-1"].inflight == set()
        assert "a1" not in w.d.assigned_at
        assert w.peer.dispatched() == []
        assert w.metric("ccaa_assign_refused_total") == 1
        assert w.metric("ccaa_queue_depth") == 1
        # the refusing agent is passed over for a while, not asked again at once
        w.peer.refuse.clear()
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == []
        # once the cooldown has passed, it gets the task
        w.clock.now += COOLDOWN_SECONDS + 0.1
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "agent-1")]
    run(go)


def test_unanswered_assignment_puts_the_task_back_and_another_agent_can_take_it():
    async def go(w: World):
        w.d.agent_up("agent-a", "worker", [], 1)
        w.peer.silent.add("agent-a")
        await w.enqueue(spec("a1"))
        assert set(w.d.queue) == {"a1"}
        assert w.d.agents["agent-a"].inflight == set()
        assert w.metric("ccaa_assign_refused_total") == 1
        # the hub declares the silent agent lost; a new agent arrives
        w.d.agent_down("agent-a")
        w.d.agent_up("agent-b", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "agent-b")]
    run(go)


def test_agent_down_drops_the_agent():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.agent_up("agent-2", "worker", [], 1)
        await w.enqueue(spec("a1"))
        holder = w.peer.assigns[0][0]
        w.d.agent_down(holder)
        assert holder not in w.d.agents
        assert "a1" not in w.d.assigned_at
        assert w.metric("ccaa_agents_known") == 1
        await w.enqueue(spec("a2"))
        await w.enqueue(spec("a3"))
        other = "agent-2" if holder == "agent-1" else "agent-1"
        assert [d for d, _ in w.peer.assigns[1:]] == [other]
        assert set(w.d.queue) == {"a3"}
        w.d.agent_down("nobody")  # unknown: no error
    run(go)


def test_sync_agents_adds_updates_and_removes():
    async def go(w: World):
        w.d.agent_up("gone", "worker", [], 1)
        w.peer.agents = [
            PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="worker", capabilities=["x"],
                     capacity=3),
            PeerInfo(name="orchestrator", kind=PeerKind.SERVICE),
        ]
        await w.d.refresh()
        assert set(w.d.agents) == {"agent-1"}
        a = w.d.agents["agent-1"]
        assert (a.role, a.capabilities, a.capacity) == ("worker", {"x"}, 3)
        w.peer.agents = [PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="utility",
                                  capacity=1)]
        await w.d.refresh()
        assert w.d.agents["agent-1"] is a and (a.role, a.capacity) == ("utility", 1)
    run(go)


def test_priority_then_aging_orders_the_queue():
    async def go(w: World):
        # no agent yet: everything waits
        w.clock.now = 0.0
        await w.enqueue(spec("old-low", priority=0))
        w.clock.now = 1.5 * AGING_SECONDS
        await w.enqueue(spec("new-high", priority=1))
        await w.enqueue(spec("new-top", priority=3))
        # scores: old-low 0 + 1.5 = 1.5; new-high 1 + 0 = 1; new-top 3
        w.d.agent_up("agent-1", "worker", [], 1)
        order = []
        w.d.dispatch()
        await w.peer.settle()
        for _ in range(3):
            order.append(w.peer.assigns[-1][1].attempt_id)
            await w.release(order[-1], "agent-1")
        assert order == ["new-top", "old-low", "new-high"]
    run(go)


def test_without_aging_higher_priority_goes_first():
    async def go(w: World):
        await w.enqueue(spec("p0", priority=0))
        await w.enqueue(spec("p5", priority=5))
        await w.enqueue(spec("p2", priority=2))
        w.d.agent_up("agent-1", "worker", [], 1)
        order = []
        w.d.dispatch()
        await w.peer.settle()
        for _ in range(3):
            order.append(w.peer.assigns[-1][1].attempt_id)
            await w.release(order[-1], "agent-1")
        assert order == ["p5", "p2", "p0"]
    run(go)


def test_round_robin_across_agents_through_the_service():
    async def go(w: World):
        for name in ("agent-c", "agent-a", "agent-b"):
            w.d.agent_up(name, "worker", [], 10)
        for i in range(6):
            await w.enqueue(spec(f"a{i}"))
        assert [d for d, _ in w.peer.assigns] == ["agent-a", "agent-b", "agent-c"] * 2
    run(go, strategy="round_robin")


def test_performance_based_learns_from_releases():
    async def go(w: World):
        w.d.agent_up("agent-a", "worker", [], 5)
        w.d.agent_up("agent-b", "worker", [], 5)
        # both get one task; b finishes quickly, a slowly
        await w.enqueue(spec("x1"))
        await w.enqueue(spec("x2"))
        holders = {s.attempt_id: d for d, s in w.peer.assigns}
        w.clock.now += 1
        await w.release("x2" if holders["x2"] == "agent-b" else "x1", "agent-b")
        w.clock.now += 20
        await w.release("x1" if holders["x1"] == "agent-a" else "x2", "agent-a")
        assert w.d.agents["agent-b"].mean_seconds() < w.d.agents["agent-a"].mean_seconds()
        await w.enqueue(spec("x3"))
        assert w.peer.assigns[-1][0] == "agent-b"
    run(go, strategy="performance_based")


def test_tasks_an_agent_reports_but_this_distributor_did_not_assign_take_its_capacity():
    """After a distributor restart its own bookkeeping is empty; the agents' reported
    running tasks (from the hub's registry) keep busy agents from looking free."""
    async def go(w: World):
        busy = PeerInfo(name="agent-busy", kind=PeerKind.AGENT, role="worker", capacity=1,
                        running=["task-from-before"])
        idle = PeerInfo(name="agent-idle", kind=PeerKind.AGENT, role="worker", capacity=1)
        w.d.sync_agents([busy, idle])
        assert w.d.agents["agent-busy"].load == 1
        await w.enqueue(spec("a1"))
        assert w.peer.dispatched() == [("a1", "agent-idle")]
    run(go)


def test_an_assignment_that_times_out_after_its_release_is_not_queued_again():
    """The agent ran the task although its answer to task.assign was lost: the
    orchestrator released the attempt before the request timed out, so it must not be
    handed out a second time."""
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.silent.add("agent-1")
        w.peer.gate = asyncio.Event()
        await w.d.on_enqueue(w.msg(TaskEnqueue(task=spec("a1"))))
        assert w.d.agents["agent-1"].inflight == {"a1"}
        await w.d.on_released(w.msg(TaskReleased(task_id="t-a1", attempt_id="a1",
                                                 agent_id="agent-1")))
        w.peer.gate.set()  # now the assign request times out
        await w.peer.settle()
        assert w.d.queue == {} and w.d.agents["agent-1"].inflight == set()
    run(go)


def test_work_for_a_role_without_agents_is_reported():
    async def go(w: World):
        await w.enqueue(spec("a1", role="architect"))
        assert w.metric("ccaa_queue_without_agents", role="architect") == 1
        w.d.agent_up("arch-1", "architect", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "arch-1")]
        assert w.metric("ccaa_queue_without_agents", role="architect") == 0
    run(go)
