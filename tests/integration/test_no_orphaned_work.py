"""A task's processes never outlive their agent: kill -9 of an agent mid-task (its
command runs in a process group of its own, so no signal reaches it) and the controller
kills what the agent left, found by the agent's token in their environment, before it
starts the agent again; the task then runs to completion exactly once elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from libs import proctrack
from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from protocols.peer import PeerKind, RegistryList
from services.controller.pool import TOKEN_ENV
from services.model_server.server import ModelServer
from tests.integration.test_bus_flow import SERVICES, session_state, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "model_scripts" / "orphan_claude.yaml"
ONLY_TWO_WORKERS = ["--host-name", "h", "--set", "agent_hierarchy.worker.count=2",
                    "--set", "agent_hierarchy.architect.count=0",
                    "--set", "agent_hierarchy.manager.count=0",
                    "--set", "agent_hierarchy.utility.count=0"]


def carrying(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries the agent token."""
    return proctrack.find_by_env(TOKEN_ENV, token)


async def kill_the_agent_mid_task(client: BusClient, procs, controller_pid: int, text: str,
                                  repo: Path, is_work: Callable[[psutil.Process], bool],
                                  timeout: float) -> tuple[str, list[list[str]]]:
    """Submit ``text`` once two agents are up, wait until the agent running it has a
    process that ``is_work``, kill -9 that agent, and wait (under a deadline) until
    nothing carrying its token runs any more. Returns the session and the command lines of
    what the agent had running at the kill (its own process aside)."""
    async def agents_up():
        reply = await client.request("hub", RegistryList(kind=PeerKind.AGENT))
        return len(reply.body.peers) == 2
    await wait_for(agents_up, timeout, "two agents")
    reply = await client.request("commands", CommandSubmit(text=text, repo=str(repo),
                                                           type=CommandType.RUN))
    sid = reply.body.session_id

    async def work_running():
        # the task is "running" a moment before its process is forked: wait for that
        st = await session_state(client, sid)
        task = st.tasks[0]
        if task.state.value != "running":
            return None
        agent = next((p for p in psutil.Process(controller_pid).children()
                      if task.agent_id in p.cmdline()), None)
        if agent is None:
            return None
        token = agent.environ()[TOKEN_ENV]
        return (agent, token) if any(is_work(p) for p in carrying(token)) else None
    agent, token = await wait_for(work_running, timeout, "the task's work to run")
    left = [p for p in carrying(token) if p.pid != agent.pid]
    procs.extra_pids.update(p.pid for p in left)  # for cleanup if they survive
    cmdlines = [p.cmdline() for p in left]
    os.kill(agent.pid, signal.SIGKILL)  # no goodbye, no signal to the task's groups

    deadline = time.monotonic() + 15
    while carrying(token):
        assert time.monotonic() < deadline, \
            f"the dead agent's work still runs: {[p.cmdline() for p in carrying(token)]}"
        await asyncio.sleep(0.05)  # wait-ok: polling the process table
    return sid, cmdlines


async def finished(client: BusClient, sid: str, timeout: float):
    async def done():
        st = await session_state(client, sid)
        return st if st.session.state.value != "running" else None
    return await wait_for(done, timeout, "the session to finish", interval=0.2)


@pytest.mark.timeout(90)
def test_killing_an_agent_mid_task_leaves_nothing_running_and_the_task_runs_once(
        procs, bus, tmp_path):
    for module in SERVICES:
        procs.ready(procs.service(module, *bus.args()))
    controller = procs.service("services.controller", *bus.args(), *ONLY_TWO_WORKERS)
    procs.ready(controller)
    repo = tmp_path / "repo"
    repo.mkdir()
    marks = repo / "marks"

    async def go():
        async with BusClient(bus.comm()) as client:
            sid, left = await kill_the_agent_mid_task(
                client, procs, controller.pid, f"sleep 4 && echo done >> {marks}", repo,
                lambda p: p.cmdline() == ["sleep", "4"], 30)
            assert ["sleep", "4"] in left
            return await finished(client, sid, 40)

    status = asyncio.run(go())
    assert status.session.state.value == "succeeded"
    assert status.tasks[0].attempt == 2
    assert marks.read_text() == "done\n"  # the killed attempt never finished


@pytest.mark.bus(heartbeat=0.5, liveness=6)
@pytest.mark.timeout(180)
def test_killing_a_claude_code_agent_mid_tool_leaves_nothing_and_the_task_runs_once(
        procs, bus, tmp_path):
    """The same with the real Claude Code CLI: the CLI and its Bash tool's processes (which
    survive the agent's death on their own) are gone before the agent starts again."""
    repo = tmp_path / "work"  # not a git repository: both attempts share the directory
    repo.mkdir()
    marks = repo / "marks"
    with ModelServer([SCRIPT]) as model:
        args = [*bus.args(), "--set", 'agent_hierarchy.worker.executor="claude"',
                "--set", 'agent_hierarchy.worker.allowed_tools=["Bash"]',
                "--set", "orchestrator.resume_on_retry=false"]
        for module in SERVICES:
            procs.ready(procs.service(module, *args))
        controller = procs.start("controller", [
            sys.executable, "-m", "services.controller", *args, *ONLY_TWO_WORKERS],
            env={"CCAA_MODEL_BASE_URL": model.url, "HOME": str(tmp_path)})
        procs.ready(controller)

        async def go():
            async with BusClient(bus.comm()) as client:
                sid, left = await kill_the_agent_mid_task(
                    client, procs, controller.pid, "ORPHAN-CHECK: run the long step", repo,
                    lambda p: any("ccaa-orphan-marker" in a for a in p.cmdline()), 60)
                assert any("claude" in " ".join(cmd) for cmd in left), left
                return await finished(client, sid, 90)

        status = asyncio.run(go())
    assert status.session.state.value == "succeeded", status.session.detail
    assert status.tasks[0].attempt == 2
    assert marks.read_text() == "done\n"  # the killed attempt's tool never finished
