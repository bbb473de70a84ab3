"""With a turn's writes grouped (as the service runs), ready tasks are started once at the
end of the turn, for all its messages, in the same transaction; the distributor hears of
an attempt only once it is durable; a failed start is undone alone and tried again."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from protocols.task import Outcome
from tests.unit.orchestrator_world import World

pytestmark = pytest.mark.timeout(30)


def grouped_world(tmp_path) -> World:
    w = World(tmp_path, max_parallel_tasks=40)
    w.store.group_commit = True
    return w


def states(w: World) -> list[str]:
    return [t.state for t in w.store.tasks()]


def test_the_tasks_of_a_turn_start_together_at_its_end(tmp_path):
    async def go():
        w = grouped_world(tmp_path)
        statements: list[str] = []
        w.store.conn.set_trace_callback(statements.append)
        try:
            ids = [await w.create(f"s{i}") for i in range(10)]
            assert states(w) == ["ready"] * 10 and w.peer.enqueued() == []
            await asyncio.sleep(0)  # wait-ok: the turn ends: its tasks start, then it commits
            assert states(w) == ["queued"] * 10
            assert sorted(s.task_id for s in w.peer.enqueued()) == sorted(ids)
            reads = [s for s in statements if s.startswith("SELECT COUNT(*) FROM tasks")]
            assert len(reads) == 1  # one look at the room for all ten
            committed = sqlite3.connect(w.store.path).execute(
                "SELECT COUNT(*) FROM tasks WHERE state='queued'").fetchone()[0]
            assert committed == 10  # started in the turn's own transaction
            for task_id in ids:  # the results of one turn free ten slots at once
                await w.result(task_id, Outcome.SUCCEEDED, released=True)
            await asyncio.sleep(0)  # wait-ok: the turn ends
            assert states(w) == ["succeeded"] * 10
        finally:
            w.close()
            w.store.close()

    asyncio.run(go())


def test_a_failed_start_is_undone_alone_told_to_no_one_and_tried_again(tmp_path):
    async def go():
        w = grouped_world(tmp_path)
        real = w.store.new_attempt
        calls = []

        def new_attempt(task):
            calls.append(task.id)
            if len(calls) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return real(task)
        w.store.new_attempt = new_attempt
        try:
            for i in range(3):
                await w.create(f"s{i}")
            await asyncio.sleep(0)  # wait-ok: the turn ends: the start fails half-way
            # the sessions are kept; no task started, not even the one before the failure,
            # and the distributor was told of none
            assert states(w) == ["ready"] * 3 and w.peer.enqueued() == []
            assert w.metric("ccaa_schedule_failures_total") == 1
            assert w.store.conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 3
            assert w.store.conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0
            await w.orch.reconcile()  # the next chance (a turn with a message, or this)
            await asyncio.sleep(0)  # wait-ok: its turn ends
            assert states(w) == ["queued"] * 3 and len(w.peer.enqueued()) == 3
        finally:
            w.close()
            w.store.close()

    asyncio.run(go())
