"""The distributor: the ready queue (priority with aging) and the choice of agent.

It learns agents from the hub (registry at start and periodically, events in between),
counts the attempts it has assigned to each until the orchestrator releases them, and
assigns with ``task.assign`` requests; an agent that refuses or does not answer gets the
task taken back and queued again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.config import SystemConfig
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import Message
from protocols.peer import Ack, PeerInfo, PeerKind, RegistryList
from protocols.task import (
    QueueStats,
    QueueStatsReply,
    TaskAssign,
    TaskDispatched,
    TaskEnqueue,
    TaskReleased,
    TaskSpec,
)
from services.distributor.choice import AgentSlot, choose

#: seconds of waiting worth one priority point
AGING_SECONDS = 10.0
#: seconds an agent that refused or did not answer an assignment is passed over
COOLDOWN_SECONDS = 5.0


@dataclass
class Queued:
    spec: TaskSpec
    since: float

    def score(self, now: float) -> float:
        return self.spec.priority + (now - self.since) / AGING_SECONDS


class Distributor:
    def __init__(self, config: SystemConfig, peer: Peer, registry: CollectorRegistry,
                 log: EventLogger | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.peer = peer
        self.log = log or get_logger("distributor")
        self.clock = clock
        self.queue: dict[str, Queued] = {}  # attempt_id -> queued entry
        self.agents: dict[str, AgentSlot] = {}
        self.assigned_at: dict[str, float] = {}  # attempt_id -> when assigned
        self.attempt_task: dict[str, str] = {}  # attempt_id -> task_id, while assigned
        self._turn = 0
        self.assigned = Counter("ccaa_tasks_assigned_total", "assignments, by strategy",
                                ["strategy"], registry=registry)
        self.refused = Counter("ccaa_assign_refused_total",
                               "assignments an agent refused or did not answer", registry=registry)
        self.queue_depth = Gauge("ccaa_queue_depth", "tasks waiting for an agent",
                                 registry=registry)
        self.agents_gauge = Gauge("ccaa_agents_known", "agents known to the distributor",
                                  registry=registry)
        self.no_agent = Gauge("ccaa_queue_without_agents",
                              "queued tasks whose role has no registered agent, by role",
                              ["role"], registry=registry)
        self._roles_missing: set[str] = set()
        self.handlers = {TaskEnqueue.TYPE: self.on_enqueue, TaskReleased.TYPE: self.on_released,
                         QueueStats.TYPE: self.on_stats}

    # ---- intake -----------------------------------------------------------------------

    async def on_enqueue(self, msg: Message) -> Ack:
        spec = msg.body.task  # type: ignore[attr-defined]
        if spec.attempt_id in self.queue or self._holder(spec.attempt_id) is not None:
            return Ack(detail="already queued")
        self.queue[spec.attempt_id] = Queued(spec, self.clock())
        self.dispatch()
        return Ack(detail="queued")

    async def on_released(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskReleased)
        self.queue.pop(body.attempt_id, None)
        self.attempt_task.pop(body.attempt_id, None)
        agent = self.agents.get(body.agent_id)
        if agent is not None and body.attempt_id in agent.inflight:
            agent.inflight.discard(body.attempt_id)
            agent.completed += 1
            agent.busy_seconds += self.clock() - self.assigned_at.pop(body.attempt_id, self.clock())
        self.dispatch()
        return None

    async def on_stats(self, msg: Message) -> QueueStatsReply:
        queued: dict[str, int] = {}
        for entry in self.queue.values():
            queued[entry.spec.role] = queued.get(entry.spec.role, 0) + 1
        agents: dict[str, int] = {}
        busy: dict[str, int] = {}
        for a in self.agents.values():
            agents[a.role] = agents.get(a.role, 0) + 1
            busy[a.role] = busy.get(a.role, 0) + (not a.free)
        return QueueStatsReply(queued=queued, agents=agents, busy=busy)

    # ---- agents -----------------------------------------------------------------------

    def sync_agents(self, peers: list[PeerInfo]) -> None:
        """Reconcile with the hub's registry: add new agents, drop vanished ones."""
        seen = set()
        for p in peers:
            if p.kind != PeerKind.AGENT:
                continue
            seen.add(p.name)
            self.agent_up(p.name, p.role, p.capabilities, p.capacity)
            slot = self.agents[p.name]
            # tasks the agent runs that this distributor did not assign (e.g. before it
            # restarted) still take its capacity
            mine = {self.attempt_task.get(a) for a in slot.inflight}
            slot.unknown_running = len([t for t in p.running if t not in mine])
        for name in set(self.agents) - seen:
            self.agent_down(name)
        self.dispatch()

    def agent_up(self, name: str, role: str, capabilities: list[str], capacity: int) -> None:
        slot = self.agents.get(name)
        if slot is None:
            self.agents[name] = AgentSlot(name, role, set(capabilities), capacity)
            self.log.info("agent.added", agent=name, role=role, capacity=capacity)
        else:
            slot.role, slot.capabilities, slot.capacity = role, set(capabilities), capacity
        self.agents_gauge.set(len(self.agents))

    def agent_down(self, name: str) -> None:
        slot = self.agents.pop(name, None)
        if slot is not None:
            for attempt in slot.inflight:
                self.assigned_at.pop(attempt, None)
                self.attempt_task.pop(attempt, None)
            self.log.info("agent.removed", agent=name, inflight=sorted(slot.inflight))
        self.agents_gauge.set(len(self.agents))

    async def refresh(self) -> None:
        try:
            reply = await self.peer.request("hub", RegistryList(kind=PeerKind.AGENT))
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            self.log.warning("registry.unavailable", error=str(exc))
            return
        self.sync_agents(reply.body.peers)  # type: ignore[attr-defined]

    # ---- dispatch ---------------------------------------------------------------------

    def dispatch(self) -> None:
        """Assign as many queued tasks as free agents allow, best score first."""
        now = self.clock()
        strategy = self.config.distribution.strategy
        for entry in sorted(self.queue.values(), key=lambda q: -q.score(now)):
            agent = choose(strategy, entry.spec, list(self.agents.values()), self._turn, now)
            if agent is None:
                continue
            self._turn += 1
            del self.queue[entry.spec.attempt_id]
            agent.inflight.add(entry.spec.attempt_id)
            self.assigned_at[entry.spec.attempt_id] = now
            self.attempt_task[entry.spec.attempt_id] = entry.spec.task_id
            self.assigned.labels(strategy).inc()
            self.peer.spawn(self._assign(agent.name, entry))
        self.queue_depth.set(len(self.queue))
        self._check_roles()

    def _check_roles(self) -> None:
        """Say so when queued work waits for a role no agent has: it would wait forever."""
        roles = {a.role for a in self.agents.values()}
        waiting: dict[str, int] = {}
        for entry in self.queue.values():
            if entry.spec.role not in roles:
                waiting[entry.spec.role] = waiting.get(entry.spec.role, 0) + 1
        for role in set(waiting) - self._roles_missing:
            self.log.warning("role.no_agents", role=role, queued=waiting[role],
                             hint=f"start one: ccaa agent --role {role}, or set "
                                  f"agent_hierarchy.{role}.count")
        for role in self._roles_missing | set(waiting):
            self.no_agent.labels(role).set(waiting.get(role, 0))
        self._roles_missing = set(waiting)

    async def _assign(self, agent_name: str, entry: Queued) -> None:
        spec = entry.spec
        try:
            await self.peer.request(agent_name, TaskAssign(task=spec))
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            self.refused.inc()
            self.log.warning("assign.failed", agent=agent_name, task=spec.task_id, error=str(exc))
            agent = self.agents.get(agent_name)
            if agent is None or spec.attempt_id not in agent.inflight:
                return  # released meanwhile (it ran after all) or the agent is gone
            agent.inflight.discard(spec.attempt_id)
            agent.cooldown_until = self.clock() + COOLDOWN_SECONDS
            self.assigned_at.pop(spec.attempt_id, None)
            self.attempt_task.pop(spec.attempt_id, None)
            self.queue[spec.attempt_id] = entry
            self.queue_depth.set(len(self.queue))
            return
        self.log.info("assigned", agent=agent_name, task=spec.task_id, attempt=spec.attempt_id)
        self.peer.send(spec.owner, TaskDispatched(task_id=spec.task_id,
                                                  attempt_id=spec.attempt_id,
                                                  agent_id=agent_name))
        self.dispatch()

    def _holder(self, attempt_id: str) -> AgentSlot | None:
        for agent in self.agents.values():
            if attempt_id in agent.inflight:
                return agent
        return None
