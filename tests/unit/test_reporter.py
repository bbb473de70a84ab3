"""The reporter: counts by topic, latest-state gauges that drop to zero, summary JSON."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from protocols import Message, make_header
from protocols.base import Body
from protocols.events import PeerEvent, SessionEvent, TaskEvent
from protocols.peer import PeerInfo, PeerKind
from protocols.task import TaskProgress
from services.reporter.service import AGENT_STATES, Reporter

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env():
    registry = CollectorRegistry()
    clock = Clock()
    return Reporter(registry, clock=clock), registry, clock


def feed(reporter: Reporter, topic: str, body: Body, src: str = "orchestrator") -> None:
    reporter.on_event(topic, Message(make_header(body.TYPE, src, "*"), body))


def task(reporter: Reporter, task_id: str, state: str, prev: str = "") -> None:
    feed(reporter, f"task.{state}", TaskEvent(session_id="s1", task_id=task_id,
                                              attempt_id="a1", state=state, prev_state=prev))


def agent(reporter: Reporter, name: str, state: str, kind: str = "agent",
          topic: str | None = None) -> None:
    feed(reporter, topic or f"{kind}.{state}", PeerEvent(name=name, kind=kind, state=state),
         src="hub")


def value(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counts_events_by_topic(env):
    reporter, registry, _ = env
    task(reporter, "t1", "queued")
    task(reporter, "t2", "queued")
    task(reporter, "t1", "running")
    feed(reporter, "session.running", SessionEvent(session_id="s1", state="running"))
    assert dict(reporter.by_topic) == {"task.queued": 2, "task.running": 1,
                                       "session.running": 1}
    assert value(registry, "ccaa_events_total", topic="task.queued") == 2
    assert value(registry, "ccaa_events_total", topic="task.running") == 1
    assert value(registry, "ccaa_events_total", topic="session.running") == 1


def test_task_and_session_counts_are_left_to_the_orchestrator(env):
    """The reporter sees only the events since it started; the counts by state on /metrics
    are the orchestrator's (from its database), so the reporter exports none of its own."""
    reporter, registry, _ = env
    task(reporter, "t1", "queued")
    feed(reporter, "session.running", SessionEvent(session_id="s1", state="running"))
    assert value(registry, "ccaa_tasks", state="queued") is None
    assert value(registry, "ccaa_sessions", state="running") is None
    assert reporter.summary()["tasks_by_state"] == {"queued": 1}


def test_agent_states_start_at_zero(env):
    _, registry, _ = env
    for state in AGENT_STATES:
        assert value(registry, "ccaa_agents", state=state) == 0


def test_agent_gauges_follow_peer_events(env):
    reporter, registry, _ = env
    agent(reporter, "a1", "registered")
    agent(reporter, "a2", "registered")
    assert value(registry, "ccaa_agents", state="idle") == 2
    agent(reporter, "a1", "busy")
    assert value(registry, "ccaa_agents", state="idle") == 1
    assert value(registry, "ccaa_agents", state="busy") == 1
    agent(reporter, "a1", "lost")
    agent(reporter, "a2", "disconnected")
    assert value(registry, "ccaa_agents", state="busy") == 0
    assert value(registry, "ccaa_agents", state="idle") == 0
    assert value(registry, "ccaa_agents", state="lost") == 1
    assert value(registry, "ccaa_agents", state="disconnected") == 1
    agent(reporter, "a1", "registered")  # back again
    assert value(registry, "ccaa_agents", state="lost") == 0
    assert value(registry, "ccaa_agents", state="idle") == 1


def test_non_agent_peers_and_pool_events_do_not_change_agent_states(env):
    reporter, registry, _ = env
    agent(reporter, "orchestrator", "registered", kind="service")
    agent(reporter, "a1", "registered")
    agent(reporter, "a1", "busy", topic="pool.scaled")
    assert reporter.agent_state == {"a1": "idle"}
    assert value(registry, "ccaa_agents", state="idle") == 1
    assert value(registry, "ccaa_agents", state="busy") == 0
    # but they are counted by topic
    assert reporter.by_topic["service.registered"] == 1
    assert reporter.by_topic["pool.scaled"] == 1


def test_progress_events_record_agent_activity(env):
    reporter, _, _ = env
    body = TaskProgress(session_id="s1", task_id="t1", attempt_id="a1", agent_id="agent-1",
                        kind="tool_use", summary="Edit main.py")
    header = make_header(body.TYPE, "agent-1", "*")
    reporter.on_event("task.progress", Message(header, body))
    assert reporter.activity == {"agent-1": {"task_id": "t1", "kind": "tool_use",
                                             "summary": "Edit main.py", "ts": header.ts}}
    assert reporter.task_state == {}


def test_summary_shape_is_json(env):
    reporter, _, clock = env
    task(reporter, "t1", "queued")
    task(reporter, "t2", "running")
    task(reporter, "t1", "running")
    feed(reporter, "session.running", SessionEvent(session_id="s1", state="running"))
    agent(reporter, "a1", "registered")
    feed(reporter, "task.progress", TaskProgress(session_id="s1", task_id="t1",
                                                 attempt_id="a1", agent_id="a1", kind="text"))
    clock.now += 12.3456
    summary = json.loads(json.dumps(reporter.summary()))
    assert set(summary) == {"uptime_s", "events_by_topic", "tasks_by_state",
                            "sessions_by_state", "agents_by_state", "agent_activity",
                            "recent_sessions", "waiting_for_agents", "counts_from",
                            "agents"}
    assert summary["counts_from"] == "events"  # until the orchestrator's counts arrive
    assert summary["uptime_s"] == pytest.approx(12.346)
    assert summary["events_by_topic"] == {"task.queued": 1, "task.running": 2,
                                          "session.running": 1, "agent.registered": 1,
                                          "task.progress": 1}
    assert summary["tasks_by_state"] == {"running": 2}
    assert summary["sessions_by_state"] == {"running": 1}
    assert summary["agents_by_state"] == {"idle": 1}
    assert summary["agent_activity"]["a1"]["task_id"] == "t1"


def test_counts_from_the_orchestrator_replace_what_events_showed(env):
    """After a reporter restart it has seen few events; the orchestrator's counts (from its
    database) are what the dashboard shows, states with no row left out."""
    reporter, _, _ = env
    task(reporter, "t1", "succeeded")
    reporter.set_counts({"succeeded": 80, "failed": 0}, {"succeeded": 95, "running": 2})
    summary = reporter.summary()
    assert summary["counts_from"] == "orchestrator"
    assert summary["sessions_by_state"] == {"succeeded": 80}
    assert summary["tasks_by_state"] == {"succeeded": 95, "running": 2}


def test_agents_listed_by_host_and_role_with_load(env):
    reporter, _, _ = env
    reporter.set_peers([
        PeerInfo(name="w2", kind=PeerKind.AGENT, role="worker", host="b", load=1, capacity=2,
                 running=["t9"]),
        PeerInfo(name="w1", kind=PeerKind.AGENT, role="worker", host="a"),
        PeerInfo(name="m1", kind=PeerKind.AGENT, role="manager", host="a"),
        PeerInfo(name="orchestrator", kind=PeerKind.SERVICE, host="a"),
    ])
    agents = reporter.agents()
    assert [(a["host"], a["role"], a["name"]) for a in agents] == [
        ("a", "manager", "m1"), ("a", "worker", "w1"), ("b", "worker", "w2")]
    assert agents[2]["load"] == 1 and agents[2]["capacity"] == 2
    assert agents[2]["running"] == ["t9"]


def test_empty_summary(env):
    reporter, _, _ = env
    summary = reporter.summary()
    assert summary["uptime_s"] == 0
    assert summary["events_by_topic"] == {} and summary["tasks_by_state"] == {}
    assert summary["agent_activity"] == {}


def test_scrape_targets_from_peers(env):
    reporter, _, _ = env
    reporter.set_peers([
        PeerInfo(name="orchestrator", kind=PeerKind.SERVICE, host="box",
                 metrics_url="http://127.0.0.1:9452/metrics"),
        PeerInfo(name="a1", kind=PeerKind.AGENT, role="worker",
                 metrics_url="http://10.0.0.2:40000"),
        PeerInfo(name="cli", kind=PeerKind.CLIENT),  # no endpoint: skipped
    ])
    assert reporter.scrape_targets() == [
        {"targets": ["127.0.0.1:9452"], "labels": {
            "__metrics_path__": "/metrics", "ccaa_peer": "orchestrator",
            "ccaa_kind": "service", "ccaa_role": "none", "host": "box"}},
        {"targets": ["10.0.0.2:40000"], "labels": {
            "__metrics_path__": "/metrics", "ccaa_peer": "a1", "ccaa_kind": "agent",
            "ccaa_role": "worker", "host": ""}},
    ]


def test_registry_refresh_is_the_truth_about_live_agents(env):
    """Agents that registered before the reporter subscribed are known from the registry;
    lost agents stay counted as lost; agents gone quietly disappear."""
    from protocols.peer import PeerState

    reporter, registry, _ = env
    agent(reporter, "old", "registered")
    agent(reporter, "dead", "lost")
    reporter.set_peers([PeerInfo(name="early", kind=PeerKind.AGENT, state=PeerState.BUSY),
                        PeerInfo(name="svc", kind=PeerKind.SERVICE)])
    assert reporter.agent_state == {"early": "busy", "dead": "lost"}
    assert value(registry, "ccaa_agents", state="busy") == 1
    assert value(registry, "ccaa_agents", state="idle") == 0
    assert value(registry, "ccaa_agents", state="lost") == 1


def test_finished_work_older_than_the_retention_is_forgotten():
    registry = CollectorRegistry()
    clock = Clock(1000.0)
    reporter = Reporter(registry, clock=clock, retention_hours=1)
    task(reporter, "old", "succeeded")
    task(reporter, "busy", "running")
    feed(reporter, "session.succeeded", SessionEvent(session_id="s-old", state="succeeded"))
    clock.now += 1800
    task(reporter, "recent", "failed")
    assert reporter.prune() == 0
    clock.now += 1801  # "old" and "s-old" are now past the hour; "busy" is not finished
    assert reporter.prune() == 2
    assert reporter.task_state == {"busy": "running", "recent": "failed"}
    assert reporter.session_state == {}
    assert reporter.summary()["tasks_by_state"] == {"running": 1, "failed": 1}


def test_recent_sessions_for_the_dashboard(env):
    from protocols.command import CommandType, SessionInfo, SessionState

    reporter, _, _ = env
    reporter.set_sessions([SessionInfo(
        session_id="s-1", type=CommandType.IMPLEMENT_FEATURE, text="add x\nmore", repo="/r",
        state=SessionState.PARTIAL, created_at=5.0, updated_at=6.0, cost_usd=0.1234567,
        detail="1/2 subtasks merged")])
    (row,) = reporter.summary()["recent_sessions"]
    assert row == {"id": "s-1", "type": "IMPLEMENT_FEATURE", "state": "partial",
                   "cost_usd": 0.123457, "detail": "1/2 subtasks merged", "text": "add x",
                   "created_at": 5.0}


def test_tasks_waiting_for_a_missing_agent_are_listed_until_they_move_on():
    reporter = Reporter(CollectorRegistry())
    task(reporter, "t1", "queued")
    feed(reporter, "task.waiting", TaskEvent(session_id="s1", task_id="t1", attempt_id="a1",
                                             state="queued", detail="no agent with role manager"))
    waiting = reporter.summary()["waiting_for_agents"]
    assert waiting["t1"]["reason"] == "no agent with role manager"
    assert waiting["t1"]["session_id"] == "s1"
    task(reporter, "t1", "failed", prev="queued")
    assert reporter.summary()["waiting_for_agents"] == {}
