"""An attempt's end frees the agent's slot in one message: the agent tells the
distributor that assigned it, and its result says so, so the owner sends no release of
its own; a release that could not be sent is left to the owner. An attempt over its
timeout is stopped and reported as timed out."""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from protocols.codec import Message, make_header
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskAssign,
    TaskReleased,
    TaskResult,
    TaskSpec,
)
from services.agent.executors.base import exited
from services.agent.executors.command import CommandExecutor
from services.agent.service import Agent
from tests.unit.test_agent_stop import Events, Peer, started

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


class UnreachablePeer(Peer):
    """The distributor cannot be reached (the agent's link is down for it)."""

    def send(self, dst: str, body: Any, corr: str = "") -> None:
        if dst == "distributor":
            raise ConnectionError("not connected")
        super().send(dst, body, corr)


async def finished(peer: Peer) -> list[tuple[str, Any]]:
    agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                  CollectorRegistry())
    _, task = await started(agent, "echo done")
    await asyncio.wait_for(task, 20)
    deadline = time.monotonic() + 20
    while not any(isinstance(b, TaskResult) for _, b in peer.sent):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)  # wait-ok: until the result is sent, under a deadline
    return peer.sent


def test_the_agent_frees_its_slot_itself_and_its_result_says_so():
    # (a run that takes a moment also tells its owner it was accepted: not counted here)
    sent = [(dst, body) for dst, body in asyncio.run(finished(Peer()))
            if isinstance(body, (TaskReleased, TaskResult))]
    kinds = [(dst, type(body).__name__) for dst, body in sent]
    assert kinds == [("distributor", "TaskReleased"), ("orchestrator", "TaskResult")]
    release, result = sent[0][1], sent[1][1]
    assert isinstance(release, TaskReleased) and release.outcome == "succeeded"
    assert result.outcome == Outcome.SUCCEEDED and result.released


def assign(agent: Agent, prompt: str, src: str = "distributor") -> Message:
    return Message(make_header(TaskAssign.TYPE, src, agent.name), TaskAssign(task=TaskSpec(
        task_id="t1", attempt_id="a1", session_id="s1", prompt=prompt)))


def test_an_attempt_ending_at_once_answers_its_assignment_with_its_release():
    async def go() -> tuple[Peer, Message]:
        peer = Peer()
        agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        msg = assign(agent, "true")
        assert await agent.on_assign(msg) is None  # no answer yet
        await asyncio.wait_for(agent.running["a1"].task, 20)
        return peer, msg

    peer, msg = asyncio.run(go())
    # one message to the distributor: the release, as the answer; none to the owner but
    # the result
    assert [(dst, type(b).__name__) for dst, b in peer.sent] == [
        ("distributor", "TaskReleased"), ("orchestrator", "TaskResult")]
    assert [(corr, type(b).__name__) for corr, b in peer.answers] == [
        (msg.header.id, "TaskReleased")]


def test_a_longer_attempt_is_accepted_once_it_has_run_a_moment_then_released():
    async def go() -> tuple[Peer, Message, list[tuple[str, Any]]]:
        peer = Peer()
        agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        msg = assign(agent, "sleep 0.5")
        assert await agent.on_assign(msg) is None
        run = agent.running["a1"]
        deadline = time.monotonic() + 20
        while not peer.answers:  # the notice delay passes while it runs
            assert time.monotonic() < deadline and not run.task.done()
            await asyncio.sleep(0.005)  # wait-ok: until the answer is sent, under a deadline
        while_running = list(peer.sent)
        await asyncio.wait_for(run.task, 20)
        return peer, msg, while_running

    peer, msg, while_running = asyncio.run(go())
    assert sorted((dst, type(b).__name__) for dst, b in while_running) == [
        ("distributor", "TaskAccepted"), ("orchestrator", "TaskAccepted")]
    assert [(corr, type(b).__name__) for corr, b in peer.answers] == [
        (msg.header.id, "TaskAccepted")]  # the later release is a message of its own
    assert [(dst, type(b).__name__) for dst, b in peer.sent[2:]] == [
        ("distributor", "TaskReleased"), ("orchestrator", "TaskResult")]


def test_an_assignment_by_the_owner_itself_is_answered_at_once():
    async def go() -> Any:
        agent = Agent(Peer(), Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        answer = await agent.on_assign(assign(agent, "true", src="orchestrator"))
        await asyncio.wait_for(agent.running["a1"].task, 20)
        return answer

    answer = asyncio.run(go())
    assert isinstance(answer, TaskAccepted) and answer.attempt_id == "a1"


def test_a_release_that_could_not_be_sent_is_left_to_the_owner():
    sent = asyncio.run(finished(UnreachablePeer()))
    results = [body for _, body in sent if isinstance(body, TaskResult)]
    assert len(results) == 1 and not results[0].released


def test_an_attempt_over_its_timeout_is_stopped_and_reported_timed_out():
    async def go() -> tuple[TaskResult, int, float]:
        peer = Peer()
        agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        spec = TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt="sleep 30",
                        timeout_s=0.5)
        t0 = time.monotonic()
        await agent.on_assign(Message(make_header(TaskAssign.TYPE, "distributor", agent.name),
                                      TaskAssign(task=spec)))
        run = agent.running["a1"]
        await asyncio.wait_for(run.task, 20)
        took = time.monotonic() - t0
        [report] = [b for _, b in peer.sent if isinstance(b, TaskResult)]
        assert run.ctx.pgid is not None
        return report, run.ctx.pgid, took

    report, pgid, took = asyncio.run(go())
    assert report.outcome == Outcome.TIMED_OUT and report.error == "timed out after 0.5s"
    assert took < 10  # not the command's own 30 s
    assert exited(pgid)  # its process was stopped with the attempt
