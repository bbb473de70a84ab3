"""A task's processes never outlive their agent: kill -9 of an agent mid-task (its
command runs in a process group of its own, so no signal reaches it) and the controller
kills what the agent left, found by the agent's token in their environment, before it
starts the agent again; the task then runs to completion exactly once elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import sys

import psutil
import pytest

from libs.client import BusClient
from services.model_server.server import ModelServer
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import SERVICES, session_state, wait_for


@pytest.mark.timeout(90)
def test_killing_an_agent_mid_task_leaves_nothing_running_and_the_task_runs_once(
        procs, bus, tmp_path):
    for module in SERVICES:
        procs.ready(procs.service(module, *bus.args()))
    controller = procs.service("services.controller", *bus.args(), "--host-name", "h",
                               "--set", "agent_hierarchy.worker.count=2",
                               "--set", "agent_hierarchy.architect.count=0",
                               "--set", "agent_hierarchy.manager.count=0",
                               "--set", "agent_hierarchy.utility.count=0")
    procs.ready(controller)
    repo = tmp_path / "repo"
    repo.mkdir()
    marks = repo / "marks"

    async def go():
        async with BusClient(bus.comm()) as client:
            async def agents_up():
                from protocols.peer import PeerKind, RegistryList
                reply = await client.request("hub", RegistryList(kind=PeerKind.AGENT))
                return len(reply.body.peers) == 2
            await wait_for(agents_up, 30, "two agents")
            reply = await client.request("commands", CommandSubmit(
                text=f"sleep 4 && echo done >> {marks}", repo=str(repo), type=CommandType.RUN))
            sid = reply.body.session_id

            async def command_running():
                # the task is "running" a moment before its shell has forked the command
                st = await session_state(client, sid)
                task = st.tasks[0]
                if task.state.value != "running":
                    return None
                agent = next((p for p in psutil.Process(controller.pid).children()
                              if task.agent_id in p.cmdline()), None)
                if agent is None:
                    return None
                token = agent.environ()["CCAA_AGENT_TOKEN"]
                sleeper = next((p for p in carrying(token) if p.cmdline() == ["sleep", "4"]),
                               None)
                return (agent, sleeper) if sleeper is not None else None
            agent, sleeper = await wait_for(command_running, 20, "the task's command to run")
            procs.extra_pids.add(sleeper.pid)  # in case it survives, for cleanup
            os.kill(agent.pid, signal.SIGKILL)  # no goodbye, no signal to the task's group

            deadline = time.monotonic() + 10
            while sleeper.is_running() and sleeper.status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline, "the dead agent's task still runs"
                await asyncio.sleep(0.05)  # wait-ok: polling the process table

            async def done():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None
            return await wait_for(done, 40, "the session to finish")

    status = asyncio.run(go())
    assert status.session.state.value == "succeeded"
    assert status.tasks[0].attempt == 2
    assert marks.read_text() == "done\n"  # the killed attempt never finished


SCRIPT = Path(__file__).resolve().parents[1] / "model_scripts" / "orphan_claude.yaml"


def carrying(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries the agent token."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE \
                    and proc.environ().get("CCAA_AGENT_TOKEN") == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


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
            sys.executable, "-m", "services.controller", *args, "--host-name", "h",
            "--set", "agent_hierarchy.worker.count=2",
            "--set", "agent_hierarchy.architect.count=0",
            "--set", "agent_hierarchy.manager.count=0",
            "--set", "agent_hierarchy.utility.count=0"],
            env={"CCAA_MODEL_BASE_URL": model.url, "HOME": str(tmp_path)})
        procs.ready(controller)

        async def go():
            async with BusClient(bus.comm()) as client:
                async def agents_up():
                    from protocols.peer import PeerKind, RegistryList
                    reply = await client.request("hub", RegistryList(kind=PeerKind.AGENT))
                    return len(reply.body.peers) == 2
                await wait_for(agents_up, 60, "two agents")
                reply = await client.request("commands", CommandSubmit(
                    text="ORPHAN-CHECK: run the long step", repo=str(repo),
                    type=CommandType.RUN))
                sid = reply.body.session_id

                async def tool_running():
                    st = await session_state(client, sid)
                    task = st.tasks[0]
                    if task.state.value != "running":
                        return None
                    agent = next((p for p in psutil.Process(controller.pid).children()
                                  if task.agent_id in p.cmdline()), None)
                    if agent is None:
                        return None
                    token = agent.environ()["CCAA_AGENT_TOKEN"]
                    tools = [p for p in carrying(token)
                             if any("ccaa-orphan-marker" in a for a in p.cmdline())]
                    return (agent, token) if tools else None
                agent, token = await wait_for(tool_running, 60, "the Bash tool to run")
                left = [p for p in carrying(token) if p.pid != agent.pid]
                assert any("claude" in " ".join(p.cmdline()) for p in left), \
                    [p.cmdline() for p in left]
                procs.extra_pids.update(p.pid for p in left)  # for cleanup if they survive
                os.kill(agent.pid, signal.SIGKILL)

                deadline = time.monotonic() + 15
                while carrying(token):
                    assert time.monotonic() < deadline, \
                        f"still running: {[p.cmdline() for p in carrying(token)]}"
                    await asyncio.sleep(0.05)  # wait-ok: polling the process table

                async def done():
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None
                return await wait_for(done, 90, "the session to finish", interval=0.2)

        status = asyncio.run(go())
    assert status.session.state.value == "succeeded", status.session.detail
    assert status.tasks[0].attempt == 2
    assert marks.read_text() == "done\n"  # the killed attempt's tool never finished
