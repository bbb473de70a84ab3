"""The orchestrator's task state machine when agents go away, sessions are cancelled or
queried, and parallelism is limited (see orchestrator_world for the harness)."""

from __future__ import annotations


import pytest

from protocols import ErrorCode, ProtocolError
from protocols.command import (
    CommandCancel,
    CommandStatus,
    CommandStatusReply,
    CommandSubmit,
    CommandType,
    SessionCreate,
)
from protocols.peer import PeerInfo, PeerKind, RegistryList
from protocols.task import (
    Outcome,
    TaskCancel,
    TaskDispatched,
    TaskReleased,
)

from tests.unit.orchestrator_world import World, _task_history, scenario

pytestmark = pytest.mark.timeout(30)


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
