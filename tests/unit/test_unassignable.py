"""Sessions never wait forever: work no live agent can take is visible at once (task
meta, an audit record, a task.waiting event) and, after orchestrator.unassignable_timeout,
fails with the reason or runs one tier up; a session's deadline cancels what is left."""

from __future__ import annotations

import sqlite3

import pytest

from protocols.command import CommandSubmit, CommandType, SessionCreate
from protocols.task import TaskCancel, TaskReleased, TaskWaiting
from services.orchestrator import queries
from services.orchestrator.store import SCHEMA, Store
from tests.unit.orchestrator_world import World, scenario
from tests.unit.test_workflow_limits import finish, make_repo, plan_text, queued, start

pytestmark = pytest.mark.timeout(30)


async def waiting(w: World, task_id: str, reason: str) -> None:
    t = w.task(task_id)
    await w.orch.on_waiting(w.msg(TaskWaiting(task_id=task_id, attempt_id=t.attempt_id,
                                              reason=reason), src="distributor"))


def test_waiting_is_recorded_shown_and_published_then_cleared(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await waiting(w, task_id, "no agent with role worker")
        await waiting(w, task_id, "no agent with role worker")  # repeated: no new record
        t = w.task(task_id)
        assert t.state == "queued"
        assert t.meta["waiting"] == {"reason": "no agent with role worker", "since": w.clock.now}
        [info] = queries.status(w.store, "s1").tasks
        assert info.meta["waiting"]["reason"] == "no agent with role worker"
        kinds = [e["kind"] for e in w.store.history("s1")]
        assert kinds.count("waiting") == 1
        [(topic, event)] = [(tp, b) for tp, b in w.events.published if tp == "task.waiting"]
        assert event.detail == "no agent with role worker" and event.task_id == task_id
        await waiting(w, task_id, "")
        assert "waiting" not in w.task(task_id).meta
        assert [e["kind"] for e in w.store.history("s1")][-1] == "waiting_over"
        # a stale attempt's notice changes nothing
        await w.orch.on_waiting(w.msg(TaskWaiting(task_id=task_id, attempt_id="att-old",
                                                  reason="x"), src="distributor"))
        assert "waiting" not in w.task(task_id).meta
    scenario(tmp_path, go)


def test_past_the_timeout_an_unassignable_task_fails_with_the_reason(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await waiting(w, task_id, "no agent with capability rust")
        w.clock.now += 100
        await w.orch.reconcile()
        assert w.task(task_id).state == "queued"  # not yet
        w.clock.now += 30
        attempt = w.task(task_id).attempt_id
        await w.orch.reconcile()
        await w.settle()
        t = w.task(task_id)
        assert t.state == "failed" and "waiting" not in t.meta
        assert t.meta["not_run"] == "no agent could take it for 130s: no agent with capability rust"
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=attempt,
                                            agent_id="")) in w.peer.sent
        row = w.store.session("s1")
        assert row["state"] == "failed"
        assert "no agent with capability rust" in row["detail"]
    scenario(tmp_path, go, unassignable_timeout=120)


def test_next_tier_runs_an_unassignable_task_one_tier_up(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await waiting(w, task_id, "no agent with role worker")
        w.clock.now += 61
        await w.orch.reconcile()
        await w.settle()
        t = w.task(task_id)
        assert t.state == "queued" and t.role == "manager" and t.attempt == 2
        assert t.meta["degraded"] == "worker -> manager"
        assert w.peer.enqueued()[-1].role == "manager"
        # it did not use up a retry: two failures still retry
        assert t.attempt - t.meta["attempt_base"] == 1
        assert "degraded" in [e["kind"] for e in w.store.history("s1")]
    scenario(tmp_path, go, unassignable_timeout=60, on_unassignable="next_tier")


def test_a_gate_no_agent_can_run_ends_the_work_instead_of_sending_it_back(tmp_path):
    make_repo(tmp_path)

    async def go(w: World):
        w.config.gates["tests"].command = "true"
        await start(w)
        [plan] = queued(w, kind="plan")
        await finish(w, plan, text=plan_text("a"))
        w.orch.schedule()
        await w.settle()
        [work] = queued(w, kind="work")
        await finish(w, work)
        [gate] = queued(w, kind="gate")
        await waiting(w, gate.id, "no agent with role utility")
        w.clock.now += 400
        await w.orch.reconcile()
        await w.settle()
        assert w.task(gate.id).state == "failed"
        assert w.task(work.id).state == "failed"
        assert queued(w) == []  # no send-back, no new round of gates
        row = w.store.session("s1")
        assert row["state"] == "failed"
        assert "gate tests could not run" in row["detail"]
        assert "no agent with role utility" in row["detail"]
    scenario(tmp_path, go, isolate_worktrees=True, retry_attempts=0)


def test_a_session_past_its_deadline_is_cancelled_and_ends_saying_so(tmp_path):
    async def go(w: World):
        cmd = CommandSubmit(text="sleep 1000", repo=w.repo, deadline_s=60)
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=cmd, type=CommandType.RUN), src="commands"))
        await w.settle()
        [task] = w.store.tasks("s1")
        await w.run(task.id)
        w.peer.alive_agents = ["agent-1"]
        w.clock.now += 59
        await w.orch.reconcile()
        assert w.store.session("s1")["state"] == "running"
        w.clock.now += 2
        await w.orch.reconcile()
        row = w.store.session("s1")
        assert row["state"] == "failed"
        assert row["detail"].startswith("the session's deadline of 60s passed; not done:")
        assert w.task(task.id).state == "cancelled"
        assert [(d, b.reason) for d, b in w.peer.sent_of(TaskCancel)] == [
            ("agent-1", "the session's deadline of 60s passed")]
    scenario(tmp_path, go)


def test_an_existing_database_gains_the_deadline_column(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA.replace("CREATE TABLE IF NOT EXISTS sessions", "CREATE TABLE x_old"))
    conn.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY, type TEXT NOT NULL, text TEXT NOT "
                 "NULL, repo TEXT NOT NULL, state TEXT NOT NULL, request TEXT NOT NULL, "
                 "created_at REAL NOT NULL, updated_at REAL NOT NULL)")
    conn.execute("INSERT INTO sessions VALUES ('s0','RUN','t','/r','succeeded','{}',1,1)")
    conn.commit()
    conn.close()
    store = Store(str(db))
    try:
        assert store.session("s0")["deadline_at"] is None
        assert store.overdue_sessions(10**10) == []
        # and the index session.list reads through
        assert store.conn.execute("SELECT 1 FROM sqlite_master WHERE type='index' AND "
                                  "name='sessions_by_created'").fetchone()
        assert [r["id"] for r in store.sessions(5)] == ["s0"]
    finally:
        store.close()
