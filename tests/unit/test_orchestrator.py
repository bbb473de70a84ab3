"""The orchestrator's task state machine (session.create, dispatch, results) with a fake
peer, a fake publisher, a manual clock and a real SQLite store in tmp_path."""

from __future__ import annotations


import pytest

from protocols import ErrorCode, ProtocolError
from protocols.command import (
    CommandSubmit,
    CommandType,
    SessionCreate,
    SessionCreateBatch,
    SessionsCreated,
)
from protocols.events import SessionEvent, TaskEvent
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskDispatched,
    TaskReleased,
    TaskResult,
    TaskResultAck,
)

from tests.unit.orchestrator_world import World, _task_history, scenario

pytestmark = pytest.mark.timeout(30)


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


def test_a_batch_creates_every_session_in_one_go_and_schedules_them(tmp_path):
    async def go(w: World):
        creates = [SessionCreate(session_id=f"b{i}", type=CommandType.RUN, classification="given",
                                 command=CommandSubmit(text=f"echo {i}", repo=w.repo))
                   for i in range(5)]
        reply = await w.orch.on_session_create_batch(w.msg(SessionCreateBatch(
            sessions=creates), src="commands"))
        assert reply == SessionsCreated(session_ids=[f"b{i}" for i in range(5)])
        await w.settle()
        assert [w.store.session(f"b{i}")["text"] for i in range(5)] == \
            [f"echo {i}" for i in range(5)]
        limit = w.orch.config.orchestrator.max_parallel_tasks
        assert sorted(t.prompt for t in w.peer.enqueued()) == \
            [f"echo {i}" for i in range(min(5, limit))]
        running = [b.session_id for _, b in w.events.published
                   if isinstance(b, SessionEvent) and b.state == "running"]
        assert running == [f"b{i}" for i in range(5)]
        # a retried batch is idempotent
        await w.orch.on_session_create_batch(w.msg(SessionCreateBatch(sessions=creates)))
        await w.settle()
        assert w.store.conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 5
        assert len(w.peer.enqueued()) == min(5, limit)
    scenario(tmp_path, go)


def test_a_batch_with_one_bad_command_creates_nothing(tmp_path):
    async def go(w: World):
        good = CommandSubmit(text="echo ok", repo=w.repo)
        bad = CommandSubmit(text="fix the bug", repo=w.repo)  # FIX_ISSUES needs a git repo
        creates = [SessionCreate(session_id="g1", command=good, type=CommandType.RUN),
                   SessionCreate(session_id="g2", command=good, type=CommandType.RUN),
                   SessionCreate(session_id="x3", command=bad, type=CommandType.FIX_ISSUES)]
        with pytest.raises(ProtocolError) as info:
            await w.orch.on_session_create_batch(w.msg(SessionCreateBatch(sessions=creates)))
        assert info.value.code == ErrorCode.INVALID_REQUEST
        assert info.value.reason.startswith("command 3 of 3: ")
        assert "git repository" in info.value.reason
        await w.settle()
        for sid in ("g1", "g2", "x3"):
            assert w.store.session(sid) is None
        assert w.store.conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
        assert w.store.conn.execute("SELECT COUNT(*) FROM audit WHERE action='submit'"
                                    ).fetchone()[0] == 0
        assert w.peer.enqueued() == [] and w.events.published == []
    scenario(tmp_path, go)


def test_a_queued_attempt_is_told_to_the_distributor_again_until_it_is_dispatched(tmp_path):
    """task.enqueue is one-way: if it is lost (the distributor restarted, say), reconcile
    tells the same attempt again once the resend interval has passed, and not before."""
    async def go(w: World):
        task_id = await w.create("s1")
        [first] = w.peer.enqueued()
        resend = max(5.0, w.config.communication.message_timeout)
        w.clock.now += resend / 2
        await w.orch.reconcile()
        assert len(w.peer.enqueued()) == 1  # too soon
        w.clock.now += resend
        await w.orch.reconcile()
        [_, again] = w.peer.enqueued()
        assert again.attempt_id == first.attempt_id and again.task_id == task_id
        assert w.task(task_id).state == "queued" and w.task(task_id).attempt == 1
        w.peer.alive_agents = ["agent-1"]
        await w.orch.on_dispatched(w.msg(TaskDispatched(
            task_id=task_id, attempt_id=first.attempt_id, agent_id="agent-1"), src="distributor"))
        w.clock.now += 2 * resend
        await w.orch.reconcile()
        assert len(w.peer.enqueued()) == 2  # assigned now: nothing more to tell
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


def test_a_result_whose_agent_freed_its_slot_itself_sends_no_second_release(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id, "agent-1")
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", released=True)
        assert ack.applied and w.task(task_id).state == "succeeded"
        assert w.peer.sent_of(TaskReleased) == []  # the agent told the distributor itself
    scenario(tmp_path, go)


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


def test_result_that_comes_first_still_walks_every_state(tmp_path):
    """The agent's result can be the first the orchestrator hears of an assignment (an
    attempt that ended within moments, whose agent sends no task.accepted, or one whose
    task.accepted was lost): the audit trail still shows assigned and running, with the
    agent and when it started, and the slot is freed."""
    async def go(w: World):
        task_id = await w.create("s1")
        attempt_id = w.task(task_id).attempt_id
        w.clock.now += 10
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-7", exit_code=0,
                             duration_s=2.5)
        assert ack.applied
        assert _task_history(w, "s1", task_id) == ["ready", "queued", "assigned", "running",
                                                    "succeeded"]
        details = [e["detail"] for e in w.store.history("s1")
                   if e["kind"] == "task" and e["to_state"] in ("assigned", "running")]
        assert details == ["to agent-7", "on agent-7"]
        told = [(b.prev_state, b.state, b.agent_id) for _, b in w.events.published
                if getattr(b, "task_id", "") == task_id and b.state != "queued"]
        assert told == [("queued", "assigned", "agent-7"), ("assigned", "running", "agent-7"),
                        ("running", "succeeded", "agent-7")]
        assert w.task(task_id).agent_id == "agent-7"
        assert w.task(task_id).started_at == w.clock.now - 2.5
        assert w.peer.sent_of(TaskReleased) == [("distributor", TaskReleased(
            task_id=task_id, attempt_id=attempt_id, agent_id="agent-7",
            outcome="succeeded", duration_s=2.5))]
    scenario(tmp_path, go)


def test_accepted_records_running_from_when_the_attempt_started(tmp_path):
    """An agent says task.accepted once the attempt has run a while: the owner records it
    assigned and running from when it started (never before it was queued), so waits and
    run times in the history are true."""
    async def go(w: World):
        task_id = await w.create("s1")
        queued_at = w.clock.now
        w.clock.now += 3.0
        t = w.task(task_id)
        await w.orch.on_accepted(w.msg(TaskAccepted(
            task_id=task_id, attempt_id=t.attempt_id, agent_id="agent-1", running_s=0.05)))
        assert w.task(task_id).started_at == pytest.approx(queued_at + 2.95)
        ts = {e["to_state"]: e["ts"] for e in w.store.history("s1")
              if e["kind"] == "task" and e["task_id"] == task_id}
        assert ts["assigned"] == ts["running"] == pytest.approx(queued_at + 2.95)
        # a claim of more than it could have run is held to the time it was queued
        task2 = await w.create("s2")
        t2 = w.task(task2)
        await w.orch.on_accepted(w.msg(TaskAccepted(
            task_id=task2, attempt_id=t2.attempt_id, agent_id="agent-1", running_s=3600)))
        assert w.task(task2).started_at == pytest.approx(t2.enqueued_at)
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
        # (a late success would be applied instead, and the re-run stopped: test_lost_attempts)
        ack = await w.result(task_id, Outcome.FAILED, "agent-1", attempt_id=old_attempt,
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
        ack = await w.result(task_id, Outcome.FAILED, "agent-1", attempt_id=old_attempt,
                             stdout="late")
        assert ack.applied is False
        att = w.store.attempt(old_attempt)
        assert att["state"] == "failed" and att["applied"] == 0 and att["ended_at"] > 0
        assert '"late"' in att["result"]
        assert w.metric("ccaa_stale_results_total") == 1
        assert any(e["kind"] == "stale_result" and e["attempt_id"] == old_attempt
                   for e in w.store.history("s1"))
        # a resend of the same stale result is not counted twice
        ack = await w.result(task_id, Outcome.FAILED, "agent-1", attempt_id=old_attempt)
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
        assert w.metric("ccaa_cost_usd_total", role="worker", model="unknown") == \
            pytest.approx(0.75)
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


def test_an_auth_failure_is_not_retried_and_ends_the_session_saying_what_to_fix(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        assert w.config.orchestrator.retry_attempts > 0  # retries are on...
        await w.run(task_id)
        await w.result(task_id, Outcome.FAILED, error="Claude Code could not authenticate "
                       "on agent agent-1 (Not logged in); to fix it: set ANTHROPIC_API_KEY",
                       data={"auth_failed": True})
        assert w.task(task_id).state == "failed"  # ...but not for this
        session = w.store.session("s1")
        assert session["state"] == "failed" and "ANTHROPIC_API_KEY" in session["detail"]
        w.clock.now += 100
        w.orch.schedule()
        await w.settle()
        assert len(w.peer.enqueued()) == 1
        assert any(e["kind"] == "auth_failed" for e in w.store.history("s1"))
    scenario(tmp_path, go)
