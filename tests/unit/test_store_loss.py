"""A state database deleted or replaced under a running orchestrator is noticed: work is
refused with a clear error (agents keep their results), never written into the void."""

from __future__ import annotations

import os
import sqlite3

import pytest

from protocols import ErrorCode, ProtocolError
from protocols.command import CommandSubmit, CommandType, SessionCreate
from protocols.task import Outcome, TaskResult
from tests.unit.orchestrator_world import World, scenario

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lost_database_file_stops_the_orchestrator_accepting_work(tmp_path, how):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        assert w.orch.check_store() == "" and w.metric("ccaa_store_ok") == 1
        db = w.store.path
        if how == "deleted":
            os.unlink(db)
        else:
            os.rename(db, db + ".old")
            sqlite3.connect(db).close()  # an empty file where the database was
        await w.orch.reconcile()
        problem = w.orch.store_problem
        assert f"{db} was {'deleted' if how == 'deleted' else 'replaced'}" in problem
        assert w.metric("ccaa_store_ok") == 0
        if how == "deleted":  # the unlinked file is still reachable, and the error says where
            assert f"/proc/{os.getpid()}/fd/" in problem
        handler = w.orch.handlers[SessionCreate.TYPE]
        with pytest.raises(ProtocolError) as info:
            await handler(w.msg(SessionCreate(
                session_id="s2", command=CommandSubmit(text="more", repo=w.repo),
                type=CommandType.RUN), src="commands"))
        assert info.value.code == ErrorCode.UNAVAILABLE and "accepts no work" in info.value.reason
        # a result is refused, not acknowledged: the agent keeps it and resends later
        t = w.task(task_id)
        with pytest.raises(ProtocolError):
            await w.orch.handlers[TaskResult.TYPE](w.msg(TaskResult(
                session_id="s1", task_id=task_id, attempt_id=t.attempt_id, agent_id="agent-1",
                outcome=Outcome.SUCCEEDED)))
        assert w.task(task_id).state == "running"
        # reads still answer from what the process holds
        assert w.orch.status("s1").session.session_id == "s1"
    scenario(tmp_path, go)
