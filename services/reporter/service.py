"""The reporter: subscribes to every event and keeps counts by type and state, the latest
state of each task, session and agent, and serves them on /metrics and /api/summary."""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from protocols import Message
from protocols.command import SessionInfo
from protocols.events import PeerEvent, SessionEvent, TaskEvent
from protocols.peer import PeerInfo
from protocols.task import TaskProgress



#: an agent's states as the hub's registry and its events name them
AGENT_STATES = ("starting", "idle", "busy", "draining", "lost", "disconnected")

FINAL_TASK_STATES = ("succeeded", "failed", "timed_out", "cancelled")
FINAL_SESSION_STATES = ("succeeded", "partial", "failed", "cancelled")


class Reporter:
    def __init__(self, registry: CollectorRegistry, clock=time.time,
                 retention_hours: float = 24.0):
        self.clock = clock
        self.retention = retention_hours * 3600
        self.started = clock()
        self.events_total = Counter("ccaa_events_total", "events seen, by topic",
                                    ["topic"], registry=registry)
        # tasks and sessions by state are the orchestrator's (ccaa_tasks, ccaa_sessions,
        # counted in its database); the counts here are what this reporter has seen
        self.agents_by_state = Gauge("ccaa_agents", "agents by latest state", ["state"],
                                     registry=registry)
        self.by_topic: Tally[str] = Tally()
        self.task_state: dict[str, str] = {}
        self.session_state: dict[str, str] = {}
        self.agent_state: dict[str, str] = {}
        self.activity: dict[str, dict[str, Any]] = {}  # agent -> last progress
        self.waiting: dict[str, dict[str, Any]] = {}  # task -> why no agent can take it
        self.peers: list[PeerInfo] = []  # from the hub's registry, refreshed periodically
        self.sessions: list[dict[str, Any]] = []  # from the orchestrator, refreshed too
        self.counts: dict[str, dict[str, int]] | None = None  # the orchestrator's, by state
        self._known: dict[int, set[str]] = {}
        self._seen: dict[str, float] = {}  # task/session id -> when last heard of
        for state in AGENT_STATES:
            self.agents_by_state.labels(state).set(0)

    def on_event(self, topic: str, msg: Message) -> None:
        self.by_topic[topic] += 1
        self.events_total.labels(topic).inc()
        body = msg.body
        if isinstance(body, TaskEvent):
            self.task_state[body.task_id] = body.state
            if topic == "task.waiting" and body.detail:
                self.waiting[body.task_id] = {"session_id": body.session_id,
                                              "reason": body.detail, "since": msg.header.ts}
            else:  # an agent can take it now, or it moved on
                self.waiting.pop(body.task_id, None)
            self._seen[body.task_id] = self.clock()
        elif isinstance(body, SessionEvent):
            self.session_state[body.session_id] = body.state
            self._seen[body.session_id] = self.clock()
        elif isinstance(body, PeerEvent) and body.kind == "agent" and not topic.startswith("pool."):
            if body.state in ("lost", "disconnected"):
                self.agent_state[body.name] = body.state
            else:
                self.agent_state[body.name] = "idle" if body.state == "registered" else body.state
            self._recount(self.agents_by_state, self.agent_state)
        elif isinstance(body, TaskProgress):
            self.activity[body.agent_id] = {"task_id": body.task_id, "kind": body.kind,
                                            "summary": body.summary, "ts": msg.header.ts}

    def prune(self) -> int:
        """Forget finished tasks and sessions, and agent activity, older than the retention
        (reporting.report_retention_hours); returns how many entries went."""
        cutoff = self.clock() - self.retention
        dropped = 0
        for states, final in ((self.task_state, FINAL_TASK_STATES),
                              (self.session_state, FINAL_SESSION_STATES)):
            for key in [k for k, v in states.items()
                        if v in final and self._seen.get(k, 0) < cutoff]:
                del states[key]
                self._seen.pop(key, None)
                dropped += 1
        for agent in [a for a, x in self.activity.items() if (x.get("ts") or 0) < cutoff]:
            del self.activity[agent]
            dropped += 1
        return dropped

    def _recount(self, gauge: Gauge, states: dict[str, str]) -> None:
        counts = Tally(states.values())
        known = self._known.setdefault(id(gauge), set(AGENT_STATES))
        known.update(counts)
        for state in known:  # states no longer held by anyone drop to zero
            gauge.labels(state).set(counts.get(state, 0))

    def set_peers(self, peers: list[PeerInfo]) -> None:
        """The hub's registry (refreshed periodically) is the truth about live agents: it
        also covers agents that registered before this reporter subscribed."""
        self.peers = peers
        live = {p.name: p.state.value for p in peers if p.kind.value == "agent"}
        gone = {n: s for n, s in self.agent_state.items()
                if n not in live and s in ("lost", "disconnected")}
        self.agent_state = {**gone, **live}
        self._recount(self.agents_by_state, self.agent_state)

    def scrape_targets(self) -> list[dict[str, Any]]:
        """Prometheus HTTP service discovery: every registered peer's /metrics endpoint.
        The labels are the target's own (peer, peer_kind, peer_role, host after the scrape
        config's relabelling), named apart from any metric's labels (kind, role, state)."""
        targets = []
        for p in self.peers:
            if not p.metrics_url:
                continue
            url = urlsplit(p.metrics_url)
            targets.append({"targets": [url.netloc], "labels": {
                "__metrics_path__": url.path or "/metrics", "ccaa_peer": p.name,
                "ccaa_kind": p.kind.value, "ccaa_role": p.role or "none", "host": p.host}})
        return targets

    def set_sessions(self, sessions: list[SessionInfo]) -> None:
        """Recent sessions from the orchestrator (refreshed periodically), for the dashboard."""
        self.sessions = [{"id": s.session_id, "type": s.type.value, "state": s.state.value,
                          "cost_usd": round(s.cost_usd, 6), "detail": s.detail[:200],
                          "text": s.text.splitlines()[0][:120] if s.text else "",
                          "created_at": s.created_at} for s in sessions]

    def set_counts(self, sessions: dict[str, int], tasks: dict[str, int]) -> None:
        """The orchestrator's counts by state (its database): what the dashboard shows, so
        that a restart of this reporter changes nothing."""
        self.counts = {"sessions": sessions, "tasks": tasks}

    def agents(self) -> list[dict[str, Any]]:
        """Every registered agent with its host, role, state and load (the registry)."""
        return sorted(({"name": p.name, "host": p.host, "role": p.role, "state": p.state.value,
                        "load": p.load, "capacity": p.capacity, "running": p.running}
                       for p in self.peers if p.kind.value == "agent"),
                      key=lambda a: (a["host"], a["role"], a["name"]))

    def summary(self) -> dict[str, Any]:
        seen = self.counts is None
        return {
            "uptime_s": round(self.clock() - self.started, 3),
            "events_by_topic": dict(self.by_topic),
            # the orchestrator's counts once known; until then what this reporter has seen
            "counts_from": "events" if seen else "orchestrator",
            "tasks_by_state": dict(Tally(self.task_state.values())) if seen
            else {k: v for k, v in self.counts["tasks"].items() if v},
            "sessions_by_state": dict(Tally(self.session_state.values())) if seen
            else {k: v for k, v in self.counts["sessions"].items() if v},
            "agents_by_state": dict(Tally(self.agent_state.values())),
            "agents": self.agents(),
            "agent_activity": self.activity,
            "waiting_for_agents": self.waiting,
            "recent_sessions": self.sessions,
        }
