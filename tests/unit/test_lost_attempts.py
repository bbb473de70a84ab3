"""An agent declared lost that comes back (a partition, a host stopped for a while) with its
attempt still running or finished: the work runs once. Kept if the re-run has reached no
agent yet, or if it comes back done while the re-run runs (the re-run is stopped); a lost
attempt still running while the re-run runs elsewhere is stopped."""

from __future__ import annotations

import pytest

from protocols.peer import PeerInfo, PeerKind
from protocols.task import Outcome, TaskAccepted, TaskCancel, TaskReleased
from tests.unit.orchestrator_world import World, scenario

pytestmark = pytest.mark.timeout(30)


async def lose(w: World, agent: str = "agent-1") -> tuple[str, str, str]:
    """A task running on ``agent``, which is then declared lost: (task, lost attempt,
    queued re-run)."""
    task_id = await w.create("s1")
    await w.run(task_id, agent)
    lost = w.task(task_id).attempt_id
    await w.orch.on_agents_lost({agent})
    await w.settle()
    rerun = w.task(task_id)
    assert rerun.state == "queued" and rerun.attempt_id != lost
    return task_id, lost, rerun.attempt_id


def back(w: World, agent: str, *running: str) -> None:
    """The agent registered again, reporting ``running`` tasks in its heartbeats."""
    w.peer.alive_agents = [agent]
    w.peer.agent_infos[agent] = PeerInfo(name=agent, kind=PeerKind.AGENT, running=list(running))


def test_a_late_result_is_applied_when_the_rerun_has_not_started(tmp_path):
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=lost,
                             stdout="done once")
        assert ack.applied is True
        t = w.task(task_id)
        assert t.state == "succeeded" and t.attempt_id == lost and t.attempt == 1
        assert t.meta["interruptions"] == 0 and "lost" not in t.meta
        assert w.store.attempt(rerun)["state"] == "withdrawn"
        assert w.store.attempt(lost)["state"] == "succeeded"
        assert w.store.attempt(lost)["applied"] == 1
        # the distributor takes the re-run out of its queue
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=rerun,
                                                        agent_id="")) in w.peer.sent
        assert w.metric("ccaa_attempts_kept_total") == 1
        assert w.metric("ccaa_stale_results_total") == 0
        details = [e["detail"] for e in w.store.history("s1") if e["task_id"] == task_id]
        assert any("came back" in d and "attempt 2 withdrawn" in d for d in details), details
    scenario(tmp_path, go)


def test_a_late_interrupted_result_leaves_the_rerun_alone(tmp_path):
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        ack = await w.result(task_id, Outcome.INTERRUPTED, "agent-1", attempt_id=lost)
        assert ack.applied is False
        assert w.task(task_id).attempt_id == rerun and w.task(task_id).state == "queued"
        assert w.metric("ccaa_attempts_kept_total") == 0
    scenario(tmp_path, go)


def test_a_heartbeat_alone_keeps_nothing_the_result_decides(tmp_path):
    # an agent of the lost one's name that reports the task may be a restarted process
    # running the re-run: only a result, which names its attempt, can keep the lost one
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        back(w, "agent-1", task_id)
        await w.orch.reconcile()
        t = w.task(task_id)
        assert t.state == "queued" and t.attempt_id == rerun
        assert not w.peer.sent_of(TaskCancel)
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=lost)
        assert ack.applied is True and w.task(task_id).state == "succeeded"
        assert w.store.attempt(rerun)["state"] == "withdrawn"
    scenario(tmp_path, go)


def test_an_agent_back_running_a_task_whose_rerun_runs_elsewhere_is_stopped(tmp_path):
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        await w.run(task_id, "agent-2")
        back(w, "agent-1", task_id)
        w.peer.alive_agents.append("agent-2")
        w.peer.agent_infos["agent-2"] = PeerInfo(name="agent-2", kind=PeerKind.AGENT,
                                                 running=[task_id])
        await w.orch.reconcile()
        cancels = w.peer.sent_of(TaskCancel)
        assert [(d, b.attempt_id) for d, b in cancels] == [("agent-1", lost)]
        assert w.task(task_id).attempt_id == rerun and w.task(task_id).state == "running"
        assert w.metric("ccaa_duplicate_attempts_stopped_total") == 1
        await w.orch.reconcile()  # said once
        assert len(w.peer.sent_of(TaskCancel)) == 1
    scenario(tmp_path, go)


def test_an_agent_that_takes_a_withdrawn_attempt_is_told_to_stop(tmp_path):
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=lost)
        # the distributor had handed the re-run to agent-2 before the withdrawal reached it
        await w.orch.on_accepted(w.msg(TaskAccepted(task_id=task_id, attempt_id=rerun,
                                                    agent_id="agent-2"), src="agent-2"))
        assert [(d, b.attempt_id) for d, b in w.peer.sent_of(TaskCancel)] == [("agent-2", rerun)]
        assert w.task(task_id).state == "succeeded"
    scenario(tmp_path, go)


def test_a_lost_attempt_that_comes_back_done_stops_the_rerun_running_elsewhere(tmp_path):
    # its agent was cut off, not dead: the work ran to its end there while the re-run
    # started on another agent; the re-run would do the same work a second time
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        await w.run(task_id, "agent-2")
        assert w.task(task_id).state == "running"
        ack = await w.result(task_id, Outcome.SUCCEEDED, "agent-1", attempt_id=lost,
                             stdout="done once")
        assert ack.applied is True
        t = w.task(task_id)
        assert t.state == "succeeded" and t.attempt_id == lost and t.agent_id == "agent-1"
        assert w.store.attempt(rerun)["state"] == "withdrawn"
        assert [(d, b.attempt_id) for d, b in w.peer.sent_of(TaskCancel)] == [("agent-2", rerun)]
        assert ("distributor", TaskReleased(task_id=task_id, attempt_id=rerun,
                                            agent_id="agent-2")) in w.peer.sent
        assert w.metric("ccaa_attempts_kept_total") == 1
        assert w.metric("ccaa_duplicate_attempts_stopped_total") == 1
        # the stopped re-run's own result changes nothing
        ack = await w.result(task_id, Outcome.CANCELLED, "agent-2", attempt_id=rerun)
        assert ack.applied is False and w.task(task_id).state == "succeeded"
        details = [e["detail"] for e in w.store.history("s1") if e["task_id"] == task_id]
        assert any("came back" in d and "stopped on agent-2" in d for d in details), details
    scenario(tmp_path, go)


def test_a_lost_attempt_that_comes_back_failed_leaves_the_running_rerun_alone(tmp_path):
    async def go(w: World):
        task_id, lost, rerun = await lose(w)
        await w.run(task_id, "agent-2")
        ack = await w.result(task_id, Outcome.FAILED, "agent-1", attempt_id=lost,
                             exit_code=1)
        assert ack.applied is False
        t = w.task(task_id)
        assert t.state == "running" and t.attempt_id == rerun and t.agent_id == "agent-2"
        assert not w.peer.sent_of(TaskCancel)
        assert w.metric("ccaa_attempts_kept_total") == 0
    scenario(tmp_path, go)
