"""The orchestrator's task state machine with a fake peer, a fake publisher, a manual clock
and a real SQLite store in tmp_path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.peer import RequestTimeout
from protocols import ErrorCode, Message, ProtocolError, make_header
from protocols.base import Body
from protocols.command import (
    CommandCancel,
    CommandStatus,
    CommandStatusReply,
    CommandSubmit,
    CommandType,
    SessionCreate,
    SessionCreated,
)
from protocols.events import SessionEvent, TaskEvent
from protocols.peer import Ack, PeerInfo, PeerKind, RegistryList, RegistryListReply
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskCancel,
    TaskDispatched,
    TaskEnqueue,
    TaskReleased,
    TaskResult,
    TaskResultAck,
    TaskSpec,
)
from services.orchestrator.service import Orchestrator
from services.orchestrator.store import Store

pytestmark = pytest.mark.timeout(30)


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
        return [b.task for d, b in self.requests if d == "distributor"
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
        self.store = Store(str(tmp_path / "state.db"))
        self.peer = FakePeer()
        self.events = FakeEvents()
        self.registry = CollectorRegistry()
        self.clock = Clock()
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


# ---- session.create ---------------------------------------------------------------------


def test_session_create_persists_and_enqueues_a_task_spec(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1", text="fix the bug\nsecond line", priority=7,
                                 timeout_s=42.0)
        session = w.store.session("s1")
        assert session["state"] == "running" and session["type"] == "RUN"
        assert session["classification"] == "given"
        t = w.task(task_id)
        assert t.state == "queued" and t.attempt == 1 and t.attempt_id
        [spec] = w.peer.enqueued()
        assert spec.task_id == task_id and spec.attempt_id == t.attempt_id
        assert spec.session_id == "s1" and spec.owner == "orchestrator"
        assert spec.prompt == "fix the bug\nsecond line" and spec.title == "fix the bug"
        assert spec.cwd == w.repo and spec.role == "worker"
        assert spec.priority == 7 and spec.timeout_s == 42.0
        assert spec.base_commit == "" and spec.isolate is False
        attempt = w.store.attempt(t.attempt_id)
        assert attempt["task_id"] == task_id and attempt["n"] == 1
        assert w.events.topics() == ["session.running", "task.queued"]
        assert _task_history(w, "s1", task_id) == ["ready", "queued"]
        assert w.metric("ccaa_tasks_active") == 1
        assert w.metric("ccaa_task_transitions_total", to_state="queued") == 1
    scenario(tmp_path, go)


def test_session_create_uses_the_configured_task_timeout_by_default(tmp_path):
    async def go(w: World):
        await w.create("s1")
        assert w.peer.enqueued()[0].timeout_s == 77.0
    scenario(tmp_path, go, task_timeout=77.0)


def test_session_create_is_idempotent(tmp_path):
    async def go(w: World):
        await w.create("s1")
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=CommandSubmit(text="other", repo=w.repo),
            type=CommandType.RUN)))
        await w.settle()
        assert len(w.store.tasks("s1")) == 1
        assert len(w.peer.enqueued()) == 1
    scenario(tmp_path, go)


def test_planned_command_on_a_directory_without_commits_is_an_invalid_request(tmp_path):
    async def go(w: World):
        with pytest.raises(ProtocolError) as info:
            await w.orch.on_session_create(w.msg(SessionCreate(
                session_id="s1", command=CommandSubmit(text="fix the bug", repo=w.repo),
                type=CommandType.FIX_ISSUES)))
        assert info.value.code == ErrorCode.INVALID_REQUEST
        assert "git repository" in info.value.reason
        assert w.store.session("s1") is None and w.peer.requests == []
    scenario(tmp_path, go)


def test_enqueue_failure_leaves_the_task_queued(tmp_path):
    async def go(w: World):
        w.peer.fail_requests = True
        task_id = await w.create("s1")
        assert w.task(task_id).state == "queued"
    scenario(tmp_path, go)


# ---- dispatched / accepted --------------------------------------------------------------


def test_dispatched_then_accepted(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        attempt_id = w.task(task_id).attempt_id
        await w.dispatch(task_id, "agent-7")
        t = w.task(task_id)
        assert (t.state, t.agent_id) == ("assigned", "agent-7")
        att = w.store.attempt(attempt_id)
        assert (att["state"], att["agent_id"]) == ("assigned", "agent-7")
        w.clock.now += 5
        await w.accept(task_id, "agent-7")
        t = w.task(task_id)
        assert (t.state, t.agent_id, t.started_at) == ("running", "agent-7", w.clock.now)
        assert w.store.attempt(attempt_id)["state"] == "running"
        assert _task_history(w, "s1", task_id) == ["ready", "queued", "assigned", "running"]
        assert w.events.topics()[-2:] == ["task.assigned", "task.running"]
        ev = w.events.published[-1][1]
        assert isinstance(ev, TaskEvent) and ev.prev_state == "assigned"
        assert ev.agent_id == "agent-7" and ev.attempt_id == attempt_id
    scenario(tmp_path, go)


def test_accepted_before_dispatched_passes_through_assigned(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.accept(task_id, "agent-2")
        t = w.task(task_id)
        assert (t.state, t.agent_id) == ("running", "agent-2")
        assert _task_history(w, "s1", task_id) == ["ready", "queued", "assigned", "running"]
        # the late dispatched changes nothing
        await w.dispatch(task_id, "agent-2")
        assert w.task(task_id).state == "running"
        assert _task_history(w, "s1", task_id) == ["ready", "queued", "assigned", "running"]
    scenario(tmp_path, go)


def test_dispatched_and_accepted_for_another_attempt_are_ignored(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.orch.on_dispatched(w.msg(TaskDispatched(task_id=task_id, attempt_id="att-old",
                                                        agent_id="a")))
        await w.orch.on_accepted(w.msg(TaskAccepted(task_id=task_id, attempt_id="att-old",
                                                    agent_id="a")))
        await w.orch.on_dispatched(w.msg(TaskDispatched(task_id="nope", attempt_id="x",
                                                        agent_id="a")))
        assert w.task(task_id).state == "queued"
    scenario(tmp_path, go)


# ---- results ----------------------------------------------------------------------------


def test_succeeded_result_finishes_task_and_session(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-1")
        attempt_id = w.task(task_id).attempt_id
        w.clock.now += 10
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", exit_code=0, stdout="done")
        assert ack == TaskResultAck(task_id=task_id, attempt_id=attempt_id, applied=True)
        t = w.task(task_id)
        assert t.state == "succeeded"
        assert t.result["stdout"] == "done" and t.result["outcome"] == "succeeded"
        assert w.store.session("s1")["state"] == "succeeded"
        assert w.peer.sent_of(TaskReleased) == [("distributor", TaskReleased(
            task_id=task_id, attempt_id=attempt_id, agent_id="agent-1",
            outcome="succeeded"))]
        att = w.store.attempt(attempt_id)
        assert (att["state"], att["ended_at"], att["applied"]) == ("succeeded", w.clock.now, 1)
        assert w.events.topics()[-2:] == ["task.succeeded", "session.succeeded"]
        assert w.metric("ccaa_sessions_finished_total", state="succeeded") == 1
        assert w.metric("ccaa_tasks_active") == 0
        status = w.orch.status("s1")
        assert status.session.state.value == "succeeded"
        assert status.tasks[0].state.value == "succeeded"
    scenario(tmp_path, go)


def test_result_whose_dispatch_and_acceptance_were_lost_still_walks_every_state(tmp_path):
    """The agent's result can be the first the orchestrator hears of an assignment (its
    task.accepted and the distributor's task.dispatched were lost): the audit trail still
    shows assigned and running, marked as known from the result, and the slot is freed."""
    async def go(w: World):
        task_id = await w.create("s1")
        attempt_id = w.task(task_id).attempt_id
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-7", exit_code=0)
        assert ack.applied
        assert _task_history(w, "s1", task_id) == ["ready", "queued", "assigned", "running",
                                                    "succeeded"]
        details = [e["detail"] for e in w.store.history("s1") if e["to_state"] == "assigned"]
        assert details == ["to agent-7 (known from its result)"]
        assert w.task(task_id).agent_id == "agent-7"
        assert w.peer.sent_of(TaskReleased) == [("distributor", TaskReleased(
            task_id=task_id, attempt_id=attempt_id, agent_id="agent-7",
            outcome="succeeded"))]
    scenario(tmp_path, go)


def test_resent_result_after_it_was_applied_is_acked_applied_once(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        first = await w.result(task_id, Outcome.SUCCEEDED)
        again = await w.result(task_id, Outcome.SUCCEEDED)
        assert first.applied and again.applied
        assert len(w.peer.sent_of(TaskReleased)) == 1
        assert w.metric("ccaa_stale_results_total") == 0
        assert w.metric("ccaa_sessions_finished_total", state="succeeded") == 1
    scenario(tmp_path, go)


def test_result_for_a_superseded_attempt_is_not_applied(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-1")
        old_attempt = w.task(task_id).attempt_id
        await w.orch.on_agents_lost({"agent-1"})
        await w.settle()
        t = w.task(task_id)
        assert t.attempt_id != old_attempt and t.state == "queued"
        await w.run(task_id, "agent-2")
        released_before = len(w.peer.sent_of(TaskReleased))
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=old_attempt,
                             stdout="late")
        assert ack == TaskResultAck(task_id=task_id, attempt_id=old_attempt, applied=False)
        t = w.task(task_id)
        assert (t.state, t.agent_id, t.result) == ("running", "agent-2", {})
        assert len(w.peer.sent_of(TaskReleased)) == released_before
        assert w.store.session("s1")["state"] == "running"
        assert w.store.attempt(old_attempt)["applied"] == 0
    scenario(tmp_path, go)


def test_late_result_of_a_lost_attempt_is_recorded_and_counted(tmp_path):
    # PROTOCOL.md, fencing: a result that is not the current attempt's "is recorded in
    # attempts and acknowledged with applied: false". The usual superseded attempt is one
    # whose agent was declared lost and came back with its result.
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-1")
        old_attempt = w.task(task_id).attempt_id
        await w.orch.on_agents_lost({"agent-1"})
        await w.settle()
        await w.run(task_id, "agent-2")
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=old_attempt,
                             stdout="late")
        assert ack.applied is False
        att = w.store.attempt(old_attempt)
        assert att["state"] == "succeeded" and att["applied"] == 0 and att["ended_at"] > 0
        assert '"late"' in att["result"]
        assert w.metric("ccaa_stale_results_total") == 1
        assert any(e["kind"] == "stale_result" and e["attempt_id"] == old_attempt
                   for e in w.store.history("s1"))
        # a resend of the same stale result is not counted twice
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=old_attempt)
        assert ack.applied is False
        assert w.metric("ccaa_stale_results_total") == 1
    scenario(tmp_path, go)


def test_result_for_an_attempt_superseded_by_a_timeout_is_recorded_not_applied(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1", timeout_s=10.0)
        await w.run(task_id, "agent-1")
        attempt_id = w.task(task_id).attempt_id
        w.peer.alive_agents = ["agent-1"]
        w.clock.now += 100
        await w.orch.reconcile()  # overdue: timed out by the orchestrator
        assert w.task(task_id).state == "timed_out"
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=attempt_id,
                             stdout="too late")
        assert ack == TaskResultAck(task_id=task_id, attempt_id=attempt_id, applied=False)
        assert w.task(task_id).state == "timed_out"
        att = w.store.attempt(attempt_id)
        assert att["state"] == "succeeded" and att["applied"] == 0
        assert '"too late"' in att["result"]
        assert w.metric("ccaa_stale_results_total") == 1
        await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=attempt_id)
        assert w.metric("ccaa_stale_results_total") == 1
    scenario(tmp_path, go, retry_attempts=0)


def test_result_from_an_agent_other_than_the_assigned_one_is_not_applied(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-1")
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-impostor")
        assert ack.applied is False
        assert w.task(task_id).state == "running"
    scenario(tmp_path, go)


def test_result_for_an_unknown_task_is_not_found(tmp_path):
    async def go(w: World):
        with pytest.raises(ProtocolError) as info:
            await w.orch.on_result(w.msg(TaskResult(
                session_id="s", task_id="task-nope", attempt_id="a", agent_id="g",
                outcome=Outcome.SUCCEEDED)))
        assert info.value.code == ErrorCode.NOT_FOUND
    scenario(tmp_path, go)


def test_failure_retries_with_doubling_backoff_then_fails_the_session(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        attempts = []
        # attempt 1 fails: ready again after 1 s
        await w.run(task_id)
        attempts.append(w.task(task_id).attempt_id)
        t0 = w.clock.now
        ack = await w.result(task_id, Outcome.FAILED, exit_code=1, error="boom")
        assert ack.applied
        t = w.task(task_id)
        assert (t.state, t.agent_id, t.ready_at) == ("ready", "", t0 + 1.0)
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=attempts[0],
                                            agent_id="agent-1", outcome="failed")) in w.peer.sent
        w.orch.schedule()  # backoff not over yet
        assert w.task(task_id).state == "ready"
        w.clock.now = t0 + 1.0
        w.orch.schedule()
        await w.settle()
        t = w.task(task_id)
        assert (t.state, t.attempt) == ("queued", 2)
        # attempt 2 times out: ready again after 2 s
        await w.run(task_id)
        attempts.append(w.task(task_id).attempt_id)
        t1 = w.clock.now
        await w.result(task_id, Outcome.TIMED_OUT, error="too slow")
        assert w.task(task_id).ready_at == t1 + 2.0
        w.clock.now = t1 + 1.9
        w.orch.schedule()
        assert w.task(task_id).state == "ready"
        w.clock.now = t1 + 2.0
        w.orch.schedule()
        await w.settle()
        # attempt 3 fails: retries exhausted (retry_attempts=2)
        await w.run(task_id)
        attempts.append(w.task(task_id).attempt_id)
        await w.result(task_id, Outcome.FAILED, error="still broken")
        t = w.task(task_id)
        assert (t.state, t.attempt) == ("failed", 3)
        session = w.store.session("s1")
        assert session["state"] == "failed" and "failed" in session["detail"]
        assert [s.attempt_id for s in w.peer.enqueued()] == attempts
        assert len(set(attempts)) == 3
        assert w.metric("ccaa_sessions_finished_total", state="failed") == 1
        assert w.events.topics()[-2:] == ["task.failed", "session.failed"]
        ev = w.events.published[-1][1]
        assert isinstance(ev, SessionEvent) and ev.state == "failed"
    scenario(tmp_path, go, retry_attempts=2, retry_backoff=1.0)


def test_retry_resumes_the_executor_session_of_the_failed_attempt(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        await w.result(task_id, Outcome.FAILED, data={"session_id": "claude-123"})
        w.clock.now += 10
        w.orch.schedule()
        await w.settle()
        first, second = w.peer.enqueued()
        assert first.resume_session == "" and second.resume_session == "claude-123"
        assert second.attempt_id != first.attempt_id
    scenario(tmp_path, go)


def test_reported_cost_is_accounted_and_the_budget_stops_further_attempts(tmp_path):
    async def go(w: World):
        cmd = CommandSubmit(text="run it", repo=w.repo, budget_usd=0.5)
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=cmd, type=CommandType.RUN)))
        await w.settle()
        [task] = w.store.tasks("s1")
        await w.run(task.id)
        await w.result(task.id, Outcome.FAILED, data={"total_cost_usd": 0.75})
        assert w.store.session("s1")["cost_usd"] == pytest.approx(0.75)
        assert w.metric("ccaa_cost_usd_total") == pytest.approx(0.75)
        assert w.task(task.id).state == "ready"  # a retry is due, but the budget is spent
        w.clock.now += 10
        w.orch.schedule()
        await w.settle()
        assert w.task(task.id).state == "cancelled"
        assert len(w.peer.enqueued()) == 1
        session = w.store.session("s1")
        assert session["state"] == "failed" and "budget" in session["detail"]
        assert any(e["kind"] == "budget_exhausted" for e in w.store.history("s1"))
    scenario(tmp_path, go)


def test_no_retries_configured_fails_at_once(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        await w.result(task_id, Outcome.TIMED_OUT)
        assert w.task(task_id).state == "timed_out"
        assert w.store.session("s1")["state"] == "failed"
    scenario(tmp_path, go, retry_attempts=0)


def test_an_agent_stopping_mid_run_runs_the_task_again_without_using_a_retry(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        for n, outcome in enumerate([Outcome.INTERRUPTED, Outcome.CANCELLED], start=1):
            await w.run(task_id, f"agent-{n}")
            old = w.task(task_id).attempt_id
            await w.result(task_id, outcome, agent=f"agent-{n}", error="agent stopping")
            t = w.task(task_id)
            assert t.state == "queued" and t.attempt == n + 1 and t.attempt_id != old
            assert t.meta["interruptions"] == n
            assert w.store.attempt(old)["state"] == outcome.value
            assert ("distributor", TaskReleased(task_id=task_id, attempt_id=old,
                                                agent_id=f"agent-{n}", outcome=outcome.value)
                    ) in w.peer.sent
        assert w.store.session("s1")["state"] == "running"
        # the retry budget is untouched: two real failures still retry, the third ends it
        for _ in range(2):
            await w.run(task_id)
            await w.result(task_id, Outcome.FAILED, error="boom")
            w.clock.now += 100
            w.orch.schedule()
            await w.settle()
            assert w.task(task_id).state == "queued"
        await w.run(task_id)
        await w.result(task_id, Outcome.FAILED, error="boom")
        assert w.task(task_id).state == "failed"
    scenario(tmp_path, go, retry_attempts=2)


def test_a_task_whose_agents_keep_going_away_fails_past_max_interruptions(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        for n in range(3):
            await w.run(task_id, f"agent-{n}")
            await w.result(task_id, Outcome.INTERRUPTED, agent=f"agent-{n}",
                           error="agent stopping")
        t = w.task(task_id)
        assert t.state == "failed" and "went away 3 times" in _last_detail(w, task_id)
        assert w.store.session("s1")["state"] == "failed"
    scenario(tmp_path, go, max_interruptions=2)


def _last_detail(w: World, task_id: str) -> str:
    t = w.task(task_id)
    return [e["detail"] for e in w.store.history(t.session_id) if e["task_id"] == task_id][-1]


# ---- lost agents ------------------------------------------------------------------------


def test_lost_agent_requeues_its_running_task_as_a_new_attempt(tmp_path):
    async def go(w: World):
        t1 = await w.create("s1")
        t2 = await w.create("s2")
        await w.run(t1, "agent-1")
        await w.run(t2, "agent-2")
        old = w.task(t1).attempt_id
        await w.orch.on_agents_lost({"agent-1", "agent-9"})
        await w.settle()
        t = w.task(t1)
        assert t.state == "queued" and t.attempt == 2 and t.attempt_id != old
        assert t.agent_id == ""
        assert w.peer.enqueued()[-1].attempt_id == t.attempt_id
        assert w.store.attempt(old)["state"] == "lost"
        assert ("distributor", TaskReleased(task_id=t1, attempt_id=old,
                                            agent_id="agent-1", outcome="lost")) in w.peer.sent
        assert _task_history(w, "s1", t1)[-2:] == ["ready", "queued"]
        assert w.task(t2).state == "running"  # other agents' tasks are untouched
        assert w.metric("ccaa_attempts_lost_total") == 1
    scenario(tmp_path, go)


def test_reconcile_detects_agents_missing_from_the_registry(tmp_path):
    async def go(w: World):
        t1 = await w.create("s1")
        await w.run(t1, "agent-1")
        w.peer.alive_agents = ["agent-2"]
        await w.orch.reconcile()
        await w.settle()
        assert ("hub", RegistryList(kind=PeerKind.AGENT)) in w.peer.requests
        t = w.task(t1)
        assert t.state == "queued" and t.attempt == 2
    scenario(tmp_path, go)


def test_reconcile_requeues_the_task_of_an_agent_restarted_under_the_same_name(tmp_path):
    async def go(w: World):
        import time

        t1 = await w.create("s1")
        t2 = await w.create("s2")
        await w.run(t1, "agent-1")
        await w.run(t2, "agent-2")
        handed = w.task(t1).updated_at
        w.peer.alive_agents = ["agent-1", "agent-2"]
        w.peer.agent_infos = {
            # a new process: registered after the hand-over, long enough to have said so
            "agent-1": PeerInfo(name="agent-1", kind=PeerKind.AGENT, running=[],
                                registered_at=time.time() - 30),
            # the same process re-registered (hub restart) and still running its task
            "agent-2": PeerInfo(name="agent-2", kind=PeerKind.AGENT, running=[t2],
                                registered_at=time.time() - 30)}
        w.store.conn.execute("UPDATE tasks SET updated_at=? WHERE id IN (?,?)",
                             (handed - 60, t1, t2))
        await w.orch.reconcile()
        await w.settle()
        assert w.task(t1).state == "queued" and w.task(t1).attempt == 2
        assert w.task(t2).state == "running"
        # just registered: it may still resend a result or heartbeat its task; wait
        t1_attempt = w.task(t1).attempt_id
        await w.run(t1, "agent-1")
        w.store.conn.execute("UPDATE tasks SET updated_at=? WHERE id=?", (handed - 60, t1))
        w.peer.agent_infos["agent-1"] = PeerInfo(name="agent-1", kind=PeerKind.AGENT,
                                                 registered_at=time.time())
        await w.orch.reconcile()
        assert w.task(t1).state == "running" and w.task(t1).attempt_id == t1_attempt
    scenario(tmp_path, go)


def test_reconcile_keeps_tasks_of_live_agents(tmp_path):
    async def go(w: World):
        t1 = await w.create("s1")
        await w.run(t1, "agent-1")
        w.peer.alive_agents = ["agent-1"]
        await w.orch.reconcile()
        assert w.task(t1).state == "running"
    scenario(tmp_path, go)


def test_reconcile_times_out_an_overdue_attempt(tmp_path):
    async def go(w: World):
        t1 = await w.create("s1", timeout_s=10.0)
        await w.run(t1, "agent-1")
        w.peer.alive_agents = ["agent-1"]
        w.clock.now += 10.0 * 1.5 + 31
        await w.orch.reconcile()
        assert w.task(t1).state == "timed_out"
        assert [d for d, _ in w.peer.sent_of(TaskCancel)] == ["agent-1"]
        assert w.store.session("s1")["state"] == "failed"
    scenario(tmp_path, go)


# ---- cancel and status ------------------------------------------------------------------


def test_cancel_stops_running_tasks_and_cancels_the_session(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-3")
        attempt_id = w.task(task_id).attempt_id
        reply = await w.orch.on_cancel(w.msg(CommandCancel(session_id="s1", reason="stop it"),
                                             src="cli"))
        assert isinstance(reply, CommandStatusReply)
        assert reply.session.state.value == "cancelled"
        assert reply.tasks[0].state.value == "cancelled"
        assert w.peer.sent_of(TaskCancel) == [("agent-3", TaskCancel(
            task_id=task_id, attempt_id=attempt_id, reason="stop it"))]
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=attempt_id,
                                            agent_id="agent-3")) in w.peer.sent
        assert w.task(task_id).state == "cancelled"
        assert w.store.session("s1")["state"] == "cancelled"
        assert w.events.topics()[-2:] == ["task.cancelled", "session.cancelled"]
        assert w.metric("ccaa_sessions_finished_total", state="cancelled") == 1
        # the cancelled agent's result that follows is not applied
        ack = await w.result(task_id, Outcome.CANCELLED, "agent-3", attempt_id=attempt_id)
        assert ack.applied is False
        assert w.store.session("s1")["state"] == "cancelled"
    scenario(tmp_path, go)


def test_cancel_queued_task_sends_no_task_cancel(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.orch.on_cancel(w.msg(CommandCancel(session_id="s1")))
        assert w.task(task_id).state == "cancelled"
        assert w.peer.sent_of(TaskCancel) == []
        assert w.store.session("s1")["state"] == "cancelled"
    scenario(tmp_path, go)


def test_cancel_queued_task_withdraws_it_from_the_distributor(tmp_path):
    # A queued attempt sits in the distributor's queue; unless the distributor is told, it
    # is assigned to an agent later and runs although its session was cancelled.
    # (Distributor.on_released drops a queued attempt, so task.released is the message.)
    async def go(w: World):
        task_id = await w.create("s1")
        attempt_id = w.task(task_id).attempt_id
        await w.orch.on_cancel(w.msg(CommandCancel(session_id="s1")))
        withdrawn = [b for d, b in w.peer.sent_of(TaskReleased)
                     if d == "distributor" and b.attempt_id == attempt_id]
        assert withdrawn, w.peer.sent
    scenario(tmp_path, go)


def test_dispatch_of_an_attempt_cancelled_meanwhile_stops_it_on_the_agent(tmp_path):
    # Cancel races an assignment: the distributor had already sent task.assign when the
    # session was cancelled. The agent must be told to stop and its slot released;
    # otherwise the cancelled task runs to the end and, as its result is then stale and
    # never released, the agent's slot in the distributor stays taken.
    async def go(w: World):
        task_id = await w.create("s1")
        attempt_id = w.task(task_id).attempt_id
        await w.orch.on_cancel(w.msg(CommandCancel(session_id="s1")))
        await w.orch.on_dispatched(w.msg(TaskDispatched(
            task_id=task_id, attempt_id=attempt_id, agent_id="agent-5"), src="distributor"))
        assert w.task(task_id).state == "cancelled"
        assert [(d, b.attempt_id) for d, b in w.peer.sent_of(TaskCancel)] == [
            ("agent-5", attempt_id)]
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=attempt_id,
                                            agent_id="agent-5")) in w.peer.sent
    scenario(tmp_path, go)


def test_cancel_a_finished_session_changes_nothing(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        await w.result(task_id, Outcome.SUCCEEDED)
        reply = await w.orch.on_cancel(w.msg(CommandCancel(session_id="s1")))
        assert reply.session.state.value == "succeeded"
        assert w.task(task_id).state == "succeeded"
        assert w.peer.sent_of(TaskCancel) == []
    scenario(tmp_path, go)


def test_status_and_cancel_of_an_unknown_session_are_not_found(tmp_path):
    async def go(w: World):
        with pytest.raises(ProtocolError) as info:
            await w.orch.on_status(w.msg(CommandStatus(session_id="nope")))
        assert info.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(ProtocolError) as info:
            w.orch.status("nope")
        assert info.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(ProtocolError) as info:
            await w.orch.on_cancel(w.msg(CommandCancel(session_id="nope")))
        assert info.value.code == ErrorCode.NOT_FOUND
    scenario(tmp_path, go)


def test_status_reports_session_tasks_and_history(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1", text="fix it")
        await w.run(task_id, "agent-1")
        reply = await w.orch.on_status(w.msg(CommandStatus(session_id="s1")))
        assert reply.session.session_id == "s1" and reply.session.text == "fix it"
        assert reply.session.repo == w.repo
        [t] = reply.tasks
        assert (t.task_id, t.state.value, t.attempt, t.agent_id) == (task_id, "running", 1,
                                                                     "agent-1")
        kinds = [(h["kind"], h["to_state"]) for h in reply.history]
        assert kinds[0] == ("session", "running")
        assert ("task", "running") in kinds
    scenario(tmp_path, go)


# ---- parallelism ------------------------------------------------------------------------


def test_max_parallel_tasks_is_honoured(tmp_path):
    async def go(w: World):
        ids = [await w.create(f"s{i}") for i in range(4)]
        states = [w.task(i).state for i in ids]
        assert states.count("queued") == 2 and states.count("ready") == 2
        assert len(w.peer.enqueued()) == 2
        assert w.metric("ccaa_tasks_active") == 2
        running = [i for i in ids if w.task(i).state == "queued"]
        for i in running:
            await w.run(i)
        await w.result(running[0], Outcome.SUCCEEDED)
        states = [w.task(i).state for i in ids]
        assert states.count("ready") == 1
        assert sum(s in ("queued", "assigned", "running") for s in states) == 2
        assert len(w.peer.enqueued()) == 3
    scenario(tmp_path, go, max_parallel_tasks=2)


def test_higher_priority_ready_task_is_queued_first(tmp_path):
    async def go(w: World):
        first = await w.create("s1")  # takes the only slot
        low = await w.create("s-low", priority=1)
        high = await w.create("s-high", priority=9)
        await w.run(first)
        await w.result(first, Outcome.SUCCEEDED)
        assert w.task(high).state == "queued" and w.task(low).state == "ready"
    scenario(tmp_path, go, max_parallel_tasks=1)


def test_requested_gates_replace_the_templates_and_unknown_ones_are_refused(tmp_path):
    import subprocess

    async def go(w: World):
        subprocess.run(["git", "init", "-q", w.repo], check=True)
        subprocess.run(["git", "-C", w.repo, "-c", "user.name=t", "-c", "user.email=t@t",
                        "commit", "-q", "--allow-empty", "-m", "base"], check=True)
        w.config.orchestrator.isolate_worktrees = True
        cmd = CommandSubmit(text="add it", repo=w.repo, gates=["lint", "nope"])
        with pytest.raises(ProtocolError) as err:
            await w.orch.on_session_create(w.msg(SessionCreate(
                session_id="s1", command=cmd, type=CommandType.IMPLEMENT_FEATURE),
                src="commands"))
        assert err.value.code == ErrorCode.INVALID_REQUEST
        assert "unknown gates: nope" in err.value.reason
        cmd = CommandSubmit(text="add it", repo=w.repo, gates=["lint"])
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s2", command=cmd, type=CommandType.IMPLEMENT_FEATURE), src="commands"))
        template = w.orch.workflow.template("s2")
        assert template.gates == ["lint"] and template.final_gates == ["lint"]
    scenario(tmp_path, go)


def test_agent_stats_count_attempts_with_a_verdict_for_the_distributor(tmp_path):
    from protocols.task import AgentStats

    async def go(w: World):
        for n, (agent, outcome, secs) in enumerate([
                ("agent-1", Outcome.SUCCEEDED, 2.0), ("agent-1", Outcome.FAILED, 0.5),
                ("agent-2", Outcome.SUCCEEDED, 4.0), ("agent-2", Outcome.INTERRUPTED, 9.0)]):
            task_id = await w.create(f"s{n}")
            await w.run(task_id, agent)
            await w.result(task_id, outcome, agent=agent, duration_s=secs)
        t = await w.create("s9")
        await w.run(t, "agent-3")
        await w.orch.on_agents_lost({"agent-3"})  # lost: says nothing of the agent
        reply = await w.orch.handlers[AgentStats.TYPE](w.msg(AgentStats(), src="distributor"))
        got = {k: (v.attempts, v.succeeded, v.busy_s) for k, v in reply.agents.items()}
        assert got == {"agent-1": (2, 1, 2.5), "agent-2": (1, 1, 4.0)}
    scenario(tmp_path, go)
