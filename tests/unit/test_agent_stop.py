"""An agent stopping in the moment a command ends by itself: the command's own result is
reported (its work is done), not "interrupted", which its owner would run again."""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from protocols.codec import Message, make_header
from protocols.task import Outcome, TaskAssign, TaskResult, TaskSpec
from services.agent.executors.base import exited
from services.agent.executors.command import CommandExecutor
from services.agent.service import Agent

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


class Peer:
    """What the agent uses of its peer: a name, a capacity, and sends it records."""

    name = "agent-1"
    capacity = 1
    registered = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.answers: list[tuple[str, Any]] = []  # (corr, body) of what answered a message
        self.on_registered: list[Any] = []
        self.heartbeat_body = None

    def send(self, dst: str, body: Any, corr: str = "") -> None:
        self.sent.append((dst, body))
        if corr:
            self.answers.append((corr, body))

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no requests expected")


class Events:
    def publish(self, topic: str, body: Any) -> None:
        pass


def hold_loop_until_exited(pid: int, within: float = 20.0) -> None:
    """Block the event loop (it must not see the exit) until child ``pid`` has ended."""
    deadline = time.monotonic() + within
    while not exited(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not end"
        time.sleep(0.01)  # wait-ok: the loop is held on purpose; polling under a deadline


async def started(agent: Agent, prompt: str) -> tuple[Any, Any]:
    spec = TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt=prompt)
    msg = Message(make_header(TaskAssign.TYPE, "distributor", agent.name),
                  TaskAssign(task=spec))
    assert await agent.on_assign(msg) is None  # answered later: accepted, or its release
    run = agent.running["a1"]
    deadline = time.monotonic() + 20
    while run.ctx.pgid is None:  # the command has started
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)  # wait-ok: until the child is started, under a deadline
    return run.ctx, run.task


def result(peer: Peer) -> TaskResult:
    """The one result sent (stop sends every unacknowledged result again)."""
    sent = {body.model_dump_json(): body for _, body in peer.sent
            if isinstance(body, TaskResult)}
    assert len(sent) == 1, list(sent)
    return next(iter(sent.values()))


@pytest.mark.parametrize("script,outcome,code", [
    ("echo done; echo job >> {mark}", Outcome.SUCCEEDED, 0),
    # a child it left holds its output open: its end is not seen from the pipes
    ("echo done; echo job >> {mark}; sleep 30 &", Outcome.SUCCEEDED, 0),
    ("echo job >> {mark}; exit 3", Outcome.INTERRUPTED, 3),  # a failure as it stops: rerun
])
def test_a_command_that_ended_as_its_agent_stopped_reports_its_own_result(
        tmp_path, script, outcome, code):
    async def go():
        peer = Peer()
        agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        mark = tmp_path / "mark"
        ctx, task = await started(agent, script.format(mark=mark))
        hold_loop_until_exited(ctx.pgid)
        assert mark.read_text() == "job\n"  # its work is done
        await agent.stop()  # the stop arrives before the loop has seen the exit
        assert task.done()
        sent = result(peer)
        assert (sent.outcome, sent.exit_code) == (outcome, code), sent
        if outcome == Outcome.SUCCEEDED:
            assert "done" in sent.stdout  # what it printed before it ended is kept
    asyncio.run(go())


def test_a_command_still_running_when_its_agent_stops_is_interrupted(tmp_path):
    async def go():
        peer = Peer()
        agent = Agent(peer, Events(), lambda spec: CommandExecutor(["bash", "-c", "{prompt}"]),
                      CollectorRegistry())
        mark = tmp_path / "mark"
        await started(agent, f"sleep 30; echo job >> {mark}")
        await agent.stop()
        sent = result(peer)
        assert sent.outcome == Outcome.INTERRUPTED, sent
        assert not mark.exists()
    asyncio.run(go())
