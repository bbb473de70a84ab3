"""A message is applied whole or not at all: a result whose application fails half-way
leaves the task, its attempt, its history and the events as they were (in the service's
group-commit mode too), and the agent's resent result is then applied."""

from __future__ import annotations

import asyncio

import pytest

from protocols.task import Outcome
from tests.unit.orchestrator_world import World

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_result_that_fails_half_way_changes_nothing_and_its_resend_applies(tmp_path,
                                                                            grouped):
    async def go():
        w = World(tmp_path)
        w.store.group_commit = grouped
        try:
            task_id = await w.create()
            await w.run(task_id)
            await asyncio.sleep(0)  # wait-ok: the end of this turn commits
            before = (w.task(task_id).state, w.store.attempt(w.task(task_id).attempt_id)["state"],
                      len(w.store.history("s1")))
            published = len(w.events.published)

            def boom(task):
                raise RuntimeError("the workflow failed after the task was moved")
            on_final, w.orch.workflow.on_final = w.orch.workflow.on_final, boom
            with pytest.raises(RuntimeError):
                await w.result(task_id)
            await asyncio.sleep(0)  # wait-ok: the end of this turn commits what is left
            task = w.task(task_id)
            assert (task.state, w.store.attempt(task.attempt_id)["state"],
                    len(w.store.history("s1"))) == before
            assert len(w.events.published) == published  # nothing told of the undone move

            w.orch.workflow.on_final = on_final
            ack = await w.result(task_id)  # the agent sends it again (not acknowledged)
            await asyncio.sleep(0)  # wait-ok: the end of this turn commits
            assert ack.applied and w.task(task_id).state == "succeeded"
            assert w.store.session("s1")["state"] == "succeeded"
            assert w.store.attempt(w.task(task_id).attempt_id)["state"] == Outcome.SUCCEEDED.value
        finally:
            w.close()
            w.store.close()

    asyncio.run(go())


def test_a_result_that_is_the_attempts_first_word_is_one_write_of_the_task(tmp_path):
    """An attempt over within moments sends no task.accepted: its result records the steps
    to running and the success together, each step in the history and told, in order."""
    async def go():
        w = World(tmp_path)
        statements: list[str] = []
        try:
            task_id = await w.create()
            w.events.published.clear()
            w.store.conn.set_trace_callback(statements.append)
            await w.result(task_id, agent="agent-7")
            w.store.conn.set_trace_callback(None)
            assert len([s for s in statements if s.startswith("UPDATE tasks")]) == 1
            steps = [(e["from_state"], e["to_state"]) for e in w.store.history("s1")
                     if e["kind"] == "task"][-3:]
            assert steps == [("queued", "assigned"), ("assigned", "running"),
                             ("running", "succeeded")]
            told = [t for t in w.events.topics() if t.startswith("task.")]
            assert told == ["task.assigned", "task.running", "task.succeeded"]
            task = w.task(task_id)
            assert (task.state, task.agent_id) == ("succeeded", "agent-7")
            assert w.store.session("s1")["state"] == "succeeded"
        finally:
            w.close()
            w.store.close()

    asyncio.run(go())
