"""A task's processes never outlive their agent: kill -9 of an agent mid-task (its
command runs in a process group of its own, so no signal reaches it) and the controller
kills what the agent left, found by the agent's token in their environment, before it
starts the agent again; the task then runs to completion exactly once elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from libs.client import BusClient
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

            async def running():
                st = await session_state(client, sid)
                return st.tasks[0] if st.tasks[0].state.value == "running" else None
            task = await wait_for(running, 20, "the task to run")
            agent = next(p for p in psutil.Process(controller.pid).children()
                         if task.agent_id in p.cmdline())
            token = agent.environ()["CCAA_AGENT_TOKEN"]
            sleeper = next(p for p in psutil.process_iter(["cmdline"])
                           if p.info["cmdline"] == ["sleep", "4"]
                           and p.environ().get("CCAA_AGENT_TOKEN") == token)
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
