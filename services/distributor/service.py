"""The distributor: the ready queue (priority with aging) and the choice of agent.

It learns agents from the hub (registry at start and periodically, events in between),
counts the attempts it has assigned to each until they are released (by the agent, as the
attempt ends, or by the orchestrator), and assigns with ``task.assign`` requests, answered
``task.accepted`` once the attempt has run a moment or by its ``task.released`` if it ends
sooner; an agent that refuses or does not answer gets the task taken back and queued again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.config import SystemConfig
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import ErrorCode, Message
from protocols.peer import PeerInfo, PeerKind, RegistryList
from protocols.task import (
    AgentStats,
    QueueStats,
    QueueStatsReply,
    TaskAssign,
    TaskEnqueue,
    TaskReleased,
    TaskSpec,
    TaskWaiting,
)
from services.distributor.choice import AgentSlot, Record, pick, unassignable_reason

#: seconds of waiting worth one priority point
AGING_SECONDS = 10.0
#: seconds an agent that refused or did not answer an assignment is passed over
COOLDOWN_SECONDS = 5.0
#: repositories whose caching hosts are remembered (least recently used forgotten first)
WARM_REPOS = 1024
#: released outcomes that are the agent's performance (lost, interrupted, withdrawn are not)
VERDICTS = ("succeeded", "failed", "timed_out")


@dataclass
class Queued:
    spec: TaskSpec
    since: float
    waiting: str = ""  # why no registered agent could take it, as last told to its owner

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
        #: each role's queue in dispatch order (stale items, no longer in ``queue``, are
        #: skipped when they come up)
        self._order: dict[str, list[tuple[float, int, Queued]]] = {}
        self._seq = itertools.count()
        self._dispatch_soon: asyncio.Handle | None = None
        self.agents: dict[str, AgentSlot] = {}
        self.assigned_at: dict[str, float] = {}  # attempt_id -> when assigned
        self.attempt_task: dict[str, str] = {}  # attempt_id -> task_id, while assigned
        self._turn = 0
        self.assigned = Counter("ccaa_tasks_assigned_total", "assignments, by strategy",
                                ["strategy"], registry=registry)
        self.assigned.labels(config.distribution.strategy)
        self.refused = Counter("ccaa_assign_refused_total",
                               "assignments an agent refused or did not answer", registry=registry)
        self.queue_depth = Gauge("ccaa_queue_depth", "tasks waiting for an agent",
                                 registry=registry)
        self.agents_gauge = Gauge("ccaa_agents_known", "agents known to the distributor",
                                  registry=registry)
        self.no_agent = Gauge("ccaa_queue_without_agents",
                              "queued tasks whose role has no registered agent, by role",
                              ["role"], registry=registry)
        self.no_capable = Gauge("ccaa_queue_without_capable_agents",
                                "queued tasks whose role has agents but none with the "
                                "capabilities they need, by role", ["role"], registry=registry)
        self.reclaimed = Counter("ccaa_slots_reclaimed_total",
                                 "agent slots freed because the agent no longer runs the "
                                 "attempt (its release never came)", registry=registry)
        self._roles_missing: set[str] = set()
        self._roles_incapable: set[str] = set()
        self._reasons: dict[tuple[str, frozenset[str]], str] = {}  # cache, cleared on changes
        self.records: dict[str, Record] = {}  # agent name -> attempt record
        self.records_loaded = False
        self.released_recently: dict[str, float] = {}  # task id -> when released
        self.hosts: dict[str, str] = {}  # agent name -> its host (outlives the agent)
        #: repository (owner, path) -> hosts that were given isolated work on it, whose
        #: caches therefore hold it
        self.warm: OrderedDict[str, set[str]] = OrderedDict()
        self.affinity = Counter("ccaa_assigned_affinity_total",
                                "assignments by affinity: the previous attempt's agent, its "
                                "host, a host caching the repository, or any",
                                ["match"], registry=registry)
        for match in ("agent", "host", "cache", "any"):
            self.affinity.labels(match)
        self.handlers = {TaskEnqueue.TYPE: self.on_enqueue, TaskReleased.TYPE: self.on_released,
                         QueueStats.TYPE: self.on_stats}

    # ---- intake -----------------------------------------------------------------------

    async def on_enqueue(self, msg: Message) -> None:
        """One-way: the owner tells an attempt again while it stays queued on its side, so
        an attempt already here (queued or assigned) is not queued twice."""
        spec = msg.body.task  # type: ignore[attr-defined]
        if spec.attempt_id in self.queue:
            entry = self.queue[spec.attempt_id]
            if entry.waiting:  # the owner may have restarted: say it again
                self._tell_waiting(entry)
            return None
        if self._holder(spec.attempt_id) is not None:
            return None
        self._put(Queued(spec, self.clock()))
        self.dispatch_soon()
        return None

    async def on_released(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskReleased)
        now = self.clock()
        if msg.header.src == body.agent_id:  # the agent: its attempt ended, the slot is free
            self._freed_by_agent(body, now)
            return None
        self.queue.pop(body.attempt_id, None)
        self.attempt_task.pop(body.attempt_id, None)
        self.released_recently[body.task_id] = now
        # whichever agent holds it: a task withdrawn while queued on the owner's side may
        # already be assigned here, and its release names no agent
        agent = self._holder(body.attempt_id)
        held_for = self._free(agent, body.attempt_id, now)
        # the record takes the agent's verdicts only (lost, interrupted, withdrawn are not
        # its doing), once: an agent that freed its slot itself was recorded then
        if agent is not None and body.outcome in VERDICTS:
            self._record(body.agent_id or agent.name).add(body.outcome,
                                                          body.duration_s or held_for)
        self.dispatch_soon()
        return None

    def _freed_by_agent(self, body: TaskReleased, now: float) -> None:
        """An agent's own word that an attempt it holds here has ended: its slot takes
        the next task now and the outcome goes into its record (an agent cannot free a
        slot that is not its own; the owner then sends no release of its own)."""
        agent = self.agents.get(body.agent_id)
        if agent is None or body.attempt_id not in agent.inflight:
            return
        held_for = self._free(agent, body.attempt_id, now)
        self.attempt_task.pop(body.attempt_id, None)
        self.released_recently[body.task_id] = now
        if body.outcome in VERDICTS:
            self._record(agent.name).add(body.outcome, body.duration_s or held_for)
        self.dispatch_soon()

    def _free(self, agent: AgentSlot | None, attempt_id: str, now: float) -> float:
        """Take the attempt out of its agent's slots (if one holds it); returns how long
        it was held."""
        held_for = now - self.assigned_at.pop(attempt_id, now)
        if agent is not None:
            agent.inflight.discard(attempt_id)
            agent.completed += 1
            agent.busy_seconds += held_for
        return held_for

    async def on_stats(self, msg: Message) -> QueueStatsReply:
        queued: dict[str, int] = {}
        for entry in self.queue.values():
            if entry.waiting.startswith("no agent with role") or not entry.waiting:
                # work needing a capability no agent of the role has is not counted: more
                # agents of the role would not take it (nor keep the pool from shrinking)
                queued[entry.spec.role] = queued.get(entry.spec.role, 0) + 1
        agents: dict[str, int] = {}
        busy: dict[str, int] = {}
        for a in self.agents.values():
            agents[a.role] = agents.get(a.role, 0) + 1
            busy[a.role] = busy.get(a.role, 0) + (not a.free)
        return QueueStatsReply(queued=queued, agents=agents, busy=busy)

    # ---- agents -----------------------------------------------------------------------

    def sync_agents(self, peers: list[PeerInfo]) -> None:
        """Reconcile with the hub's registry: add new agents, drop vanished ones, free
        slots the agents no longer use, count work they run that was not assigned here."""
        now = self.clock()
        hb = self.config.communication.heartbeat_interval
        # the registry's running lists are up to a heartbeat old (plus a refresh period)
        settle = 3 * hb + self.config.orchestrator.reconcile_interval
        self.released_recently = {t: at for t, at in self.released_recently.items()
                                  if now - at < settle}
        seen = set()
        for p in peers:
            if p.kind != PeerKind.AGENT:
                continue
            seen.add(p.name)
            self.agent_up(p.name, p.role, p.capabilities, p.capacity, p.host)
            slot = self.agents[p.name]
            running = set(p.running)
            for attempt in list(slot.inflight):
                if (self.attempt_task.get(attempt) not in running
                        and now - self.assigned_at.get(attempt, now) > settle):
                    self._reclaim(slot, attempt)
            # tasks the agent runs that this distributor did not assign (e.g. before it
            # restarted) still take its capacity; those it just released do not
            mine = {self.attempt_task.get(a) for a in slot.inflight}
            slot.unknown_running = len([t for t in running
                                        if t not in mine and t not in self.released_recently])
        for name in set(self.agents) - seen:
            self.agent_down(name)
        self.dispatch()

    def _reclaim(self, slot: AgentSlot, attempt: str) -> None:
        slot.inflight.discard(attempt)
        self.assigned_at.pop(attempt, None)
        task = self.attempt_task.pop(attempt, None)
        self.reclaimed.inc()
        self.log.warning("slot.reclaimed", agent=slot.name, task=task, attempt=attempt,
                         why="the agent no longer reports it running and no release came")

    def _record(self, name: str) -> Record:
        """The agent's record, the same object its slot holds (it outlives the slot)."""
        return self.records.setdefault(name, Record())

    async def load_records(self) -> None:
        """Seed the agents' attempt records from the orchestrator's history (once)."""
        if self.records_loaded:
            return
        try:
            reply = await self.peer.request("orchestrator", AgentStats())
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            self.log.warning("records.unavailable", error=str(exc))
            return
        for name, rec in reply.body.agents.items():  # type: ignore[attr-defined]
            record = self._record(name)
            record.attempts += rec.attempts
            record.succeeded += rec.succeeded
            record.busy_s += rec.busy_s
        self.records_loaded = True
        self.log.info("records.loaded", agents=len(reply.body.agents))  # type: ignore[attr-defined]

    def agent_up(self, name: str, role: str, capabilities: list[str], capacity: int,
                 host: str = "") -> None:
        slot = self.agents.get(name)
        self.hosts[name] = host
        if slot is None:
            self.agents[name] = AgentSlot(name, role, set(capabilities), capacity,
                                          record=self._record(name), host=host)
            self.log.info("agent.added", agent=name, role=role, capacity=capacity)
            self._reasons.clear()
        elif (slot.role, slot.capabilities, slot.capacity) != (role, set(capabilities), capacity):
            slot.role, slot.capabilities, slot.capacity = role, set(capabilities), capacity
            self._reasons.clear()
        self.agents_gauge.set(len(self.agents))

    def agent_down(self, name: str) -> None:
        slot = self.agents.pop(name, None)
        if slot is not None:
            for attempt in slot.inflight:
                self.assigned_at.pop(attempt, None)
                self.attempt_task.pop(attempt, None)
            self.log.info("agent.removed", agent=name, inflight=sorted(slot.inflight))
            self._reasons.clear()
            self._check_waiting()  # its work may have no one left to take it
        self.agents_gauge.set(len(self.agents))

    async def refresh(self) -> None:
        try:
            reply = await self.peer.request("hub", RegistryList(kind=PeerKind.AGENT))
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            self.log.warning("registry.unavailable", error=str(exc))
            return
        self.sync_agents(reply.body.peers)  # type: ignore[attr-defined]

    # ---- dispatch ---------------------------------------------------------------------

    def _put(self, entry: Queued) -> None:
        self.queue[entry.spec.attempt_id] = entry
        order = self._order.setdefault(entry.spec.role, [])
        # score(now) = priority + (now - since) / AGING_SECONDS ranks entries the same at
        # any ``now``: the order is fixed when an entry is queued
        heapq.heappush(order, (entry.since / AGING_SECONDS - entry.spec.priority,
                               next(self._seq), entry))
        if len(order) > 2 * len(self.queue) + 64:  # drop the stale items
            order[:] = [item for item in order
                        if self.queue.get(item[2].spec.attempt_id) is item[2]]
            heapq.heapify(order)

    def dispatch_soon(self) -> None:
        """Dispatch once this turn of the loop is over (many enqueues and releases arrive
        together: one pass serves them all)."""
        if self._dispatch_soon is None:
            self._dispatch_soon = asyncio.get_running_loop().call_soon(self._dispatch_now)

    def _dispatch_now(self) -> None:
        self._dispatch_soon = None
        self.dispatch()

    def dispatch(self) -> None:
        """Assign as many queued tasks as free agents allow, best score first."""
        now = self.clock()
        strategy = self.config.distribution.strategy
        # each role's free slots among agents that may take work now: a role without any
        # is not looked at (its queue may hold thousands of tasks)
        slots: dict[str, int] = {}
        for a in self.agents.values():
            if a.free and a.cooldown_until <= now:
                slots[a.role] = slots.get(a.role, 0) + a.capacity - a.load
        for role, free in slots.items():
            order = self._order.get(role)
            passed: list[tuple[float, int, Queued]] = []  # no agent for them now
            while free > 0 and order:
                item = heapq.heappop(order)
                entry = item[2]
                spec = entry.spec
                if self.queue.get(spec.attempt_id) is not entry:
                    continue  # released or assigned since it was queued
                if self._assign_one(entry, strategy, now):
                    free -= 1
                else:
                    passed.append(item)
            for item in passed:
                heapq.heappush(order, item)  # type: ignore[arg-type]
        self.queue_depth.set(len(self.queue))
        self._check_waiting()

    def _assign_one(self, entry: Queued, strategy: str, now: float) -> bool:
        """Give ``entry`` to the best free agent, if one may take it."""
        spec = entry.spec
        repo = self._repo_key(spec)
        agent, match = pick(strategy, spec, list(self.agents.values()), self._turn, now,
                            self.hosts.get(spec.prefer_agent, ""),
                            frozenset(self.warm.get(repo, ())) if repo else frozenset())
        if agent is None:
            return False
        self.affinity.labels(match).inc()
        if repo:
            self.warm.setdefault(repo, set()).add(agent.host)
            self.warm.move_to_end(repo)
            while len(self.warm) > WARM_REPOS:
                self.warm.popitem(last=False)
        self._turn += 1
        del self.queue[spec.attempt_id]
        agent.inflight.add(spec.attempt_id)
        self.assigned_at[spec.attempt_id] = now
        self.attempt_task[spec.attempt_id] = spec.task_id
        self.assigned.labels(strategy).inc()
        self.peer.spawn(self._assign(agent.name, entry))
        return True

    @staticmethod
    def _repo_key(spec: TaskSpec) -> str:
        """The repository a task works on, for the cache affinity ("" when it works in
        place without one)."""
        return f"{spec.owner}\0{spec.cwd}" if spec.isolate and spec.base_commit else ""

    def _reason(self, spec: TaskSpec) -> str:
        key = (spec.role, frozenset(spec.capabilities))
        if key not in self._reasons:
            self._reasons[key] = unassignable_reason(spec.role, key[1],
                                                     list(self.agents.values()))
        return self._reasons[key]

    def _tell_waiting(self, entry: Queued) -> None:
        self.peer.send(entry.spec.owner, TaskWaiting(task_id=entry.spec.task_id,
                                                     attempt_id=entry.spec.attempt_id,
                                                     reason=entry.waiting))

    def _check_waiting(self) -> None:
        """Tell a task's owner when no registered agent could take it (it would wait
        forever) and when one can again; count such work by role."""
        no_role: dict[str, int] = {}
        no_caps: dict[str, int] = {}
        for entry in self.queue.values():
            reason = self._reason(entry.spec)
            if reason != entry.waiting:
                entry.waiting = reason
                self._tell_waiting(entry)
            if reason:
                counts = no_role if reason.startswith("no agent with role") else no_caps
                counts[entry.spec.role] = counts.get(entry.spec.role, 0) + 1
        for role in set(no_role) - self._roles_missing:
            self.log.warning("role.no_agents", role=role, queued=no_role[role],
                             hint=f"start one: ccaa agent --role {role}, or set "
                                  f"agent_hierarchy.{role}.count")
        for gauge, now, before in ((self.no_agent, no_role, self._roles_missing),
                                   (self.no_capable, no_caps, self._roles_incapable)):
            for role in before | set(now):
                gauge.labels(role).set(now.get(role, 0))
        self._roles_missing, self._roles_incapable = set(no_role), set(no_caps)

    async def _assign(self, agent_name: str, entry: Queued) -> None:
        spec = entry.spec
        try:
            reply = await self.peer.request(agent_name, TaskAssign(task=spec))
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            self.refused.inc()
            self.log.warning("assign.failed", agent=agent_name, task=spec.task_id, error=str(exc))
            agent = self.agents.get(agent_name)
            if agent is None or spec.attempt_id not in agent.inflight:
                return  # released meanwhile (it ran after all) or the agent is gone
            agent.inflight.discard(spec.attempt_id)
            # busy: it is still finishing something (e.g. killing a cancelled run), so try
            # it again soon; no answer at all: leave it alone longer
            busy = isinstance(exc, RequestFailed) and exc.code == ErrorCode.BUSY.value
            pause = self.config.communication.heartbeat_interval if busy else COOLDOWN_SECONDS
            agent.cooldown_until = self.clock() + pause
            self.assigned_at.pop(spec.attempt_id, None)
            self.attempt_task.pop(spec.attempt_id, None)
            self._put(entry)
            self.queue_depth.set(len(self.queue))
            self.dispatch_soon()  # another agent may take it now
            self.peer.spawn(self._dispatch_after(pause))
            return
        # the agent tells the owner itself (task.accepted), so the owner hears of it one
        # routed leg sooner and this side sends nothing more
        self.log.info("assigned", agent=agent_name, task=spec.task_id, attempt=spec.attempt_id)
        body = reply.body
        if isinstance(body, TaskReleased):
            # it ended before its agent answered: the answer is its release
            if reply.header.src == body.agent_id == agent_name \
                    and body.attempt_id == spec.attempt_id:
                self._freed_by_agent(body, self.clock())
            else:
                self.log.warning("release.refused", agent=agent_name, task=spec.task_id,
                                 why="the answer to an assignment names another attempt")
        self.dispatch_soon()

    async def _dispatch_after(self, delay: float) -> None:
        await asyncio.sleep(delay + 0.01)
        self.dispatch()

    def _holder(self, attempt_id: str) -> AgentSlot | None:
        for agent in self.agents.values():
            if attempt_id in agent.inflight:
                return agent
        return None
