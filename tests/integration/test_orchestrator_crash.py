"""kill -9 of the orchestrator mid-session, then its restart (as supervisord would): the
session completes with no task lost and no result applied twice."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from libs.client import BusClient
from libs.events import EventSubscriber
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import session_state, wait_for
from tests.integration.test_workflow_scripted import make_repo, stack_args, start_stack


@pytest.mark.timeout(180)
def test_session_survives_orchestrator_kill(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    start_stack(procs, bus, {"SCRIPTED_WORK_DELAY": "1.0"})  # work outlives the outage
    orchestrator = next(p for name, p in procs.procs if name == "orchestrator")

    async def go():
        work_running = asyncio.Event()

        def on_event(topic, msg):
            if topic == "task.running":
                work_running.set()

        sub = EventSubscriber(bus.sub, ["task.running"], on_event)
        sub.start()
        try:
            async with BusClient(bus.comm()) as client:
                accepted = await client.request("commands", CommandSubmit(
                    text="Create alpha, beta and gamma files", repo=str(repo),
                    type=CommandType.IMPLEMENT_FEATURE))
                sid = accepted.body.session_id
                # kill it once the session is under way (plan done, work running or beyond)
                deadline = time.monotonic() + 60
                while True:
                    st = await session_state(client, sid)
                    if any(t.kind == "work" and t.state.value == "running" for t in st.tasks):
                        break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)  # wait-ok: polling state under a deadline
            return sid
        finally:
            await sub.close()

    sid = asyncio.run(go())
    procs.kill(orchestrator)  # SIGKILL mid-session
    orchestrator.wait(5)
    restarted = procs.service("services.orchestrator", *stack_args(bus), name="orch2")
    procs.ready(restarted, timeout=30)

    async def finish():
        async with BusClient(bus.comm()) as client:
            async def done():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None
            return await wait_for(done, 120, "the session to finish", interval=0.1)

    status = asyncio.run(finish())
    assert status.session.state.value == "succeeded", status.session.detail
    work = {t.key: t for t in status.tasks if t.kind == "work"}
    assert set(work) == {"a", "b", "c"} and all(t.meta.get("accepted") for t in work.values())

    db = sqlite3.connect(str(Path(bus.data_dir) / "orchestrator.db"))
    # every task ended exactly once per attempt: no result applied twice
    rows = db.execute("SELECT task_id, COUNT(*) FROM attempts WHERE applied=1 GROUP BY task_id"
                      " HAVING COUNT(*) > 1").fetchall()
    for task_id, applied in rows:  # several applied attempts are fine only as retries
        n = db.execute("SELECT COUNT(*) FROM events WHERE task_id=? AND to_state='ready'"
                       " AND from_state != ''", (task_id,)).fetchone()[0]
        assert n >= applied - 1, (task_id, applied)
    finals = db.execute("SELECT task_id, to_state, COUNT(*) FROM events WHERE kind='task'"
                        " AND to_state IN ('succeeded','failed') GROUP BY task_id, to_state,"
                        " attempt_id HAVING COUNT(*) > 1").fetchall()
    assert finals == []  # no attempt reached a final state twice
    merged = db.execute("SELECT COUNT(*) FROM events WHERE kind='merged'").fetchone()[0]
    assert merged == 1
    # the work that was running across the outage was not redone: one attempt each for a
    # and c (b fails its gate once by script and is sent back: two)
    assert work["a"].attempt == 1 and work["c"].attempt == 1 and work["b"].attempt == 2

