"""With real processes: cancelling busy sessions over and over leaks no agent slot (every
agent takes work right after), and work for a role nobody runs is reported at once and
ends with that reason instead of waiting forever."""

from __future__ import annotations

import asyncio
import time

import pytest

from libs.client import BusClient
from protocols.command import CommandCancel, CommandSubmit, CommandType
from protocols.task import QueueStats
from tests.integration.test_bus_flow import session_state, start_agent, start_services, wait_for

AGENTS = ("agent-1", "agent-2")


@pytest.mark.timeout(120)
def test_cancelling_busy_sessions_in_a_loop_leaks_no_agent_slot(procs, bus, tmp_path):
    start_services(procs, bus)
    for name in AGENTS:
        start_agent(procs, bus, name)
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        async with BusClient(bus.comm()) as client:
            async def submit(text: str) -> str:
                reply = await client.request("commands", CommandSubmit(
                    text=text, repo=str(repo), type=CommandType.RUN))
                return reply.body.session_id

            async def cancel(sid: str) -> None:
                reply = await client.request("orchestrator", CommandCancel(session_id=sid))
                assert reply.body.session.state.value == "cancelled"

            for round_ in range(6):
                # three sessions for two agents: one stays queued, two get assigned; cancel
                # them at different moments (at once, while assigning, while running)
                sids = [await submit("sleep 30") for _ in range(3)]
                if round_ % 3 == 1:
                    await asyncio.sleep(0.05 * round_)  # wait-ok: cancel mid-assignment
                elif round_ % 3 == 2:
                    async def running():
                        states = [(await session_state(client, s)).tasks[0].state.value
                                  for s in sids]
                        return states.count("running") >= 2
                    await wait_for(running, 20, "two tasks running")
                for sid in sids:
                    await cancel(sid)

            # every agent takes work promptly: two quick tasks run on two agents at once
            marks = [repo / f"done-{i}" for i in range(2)]
            sids = [await submit(f"sleep 1 && touch {m}") for m in marks]

            async def both_done():
                states = [await session_state(client, s) for s in sids]
                return states if all(s.session.state.value == "succeeded"
                                     for s in states) else None

            started = time.monotonic()
            states = await wait_for(both_done, 20, "both quick sessions")
            assert time.monotonic() - started < 8, "an agent slot was left busy"
            assert {s.tasks[0].agent_id for s in states} == set(AGENTS)

            async def idle():
                stats = (await client.request("distributor", QueueStats())).body
                return stats.busy.get("worker", 0) == 0 and not stats.queued
            await wait_for(idle, 10, "the distributor to see every agent idle")

    asyncio.run(go())


@pytest.mark.timeout(60)
def test_work_for_a_role_without_agents_is_reported_at_once_then_fails_saying_why(
        procs, bus, tmp_path):
    args = [*bus.args(), "--set", "orchestrator.unassignable_timeout=3"]
    for module in ("services.commands", "services.orchestrator", "services.distributor"):
        procs.ready(procs.service(module, *args))
    start_agent(procs, bus, "agent-w")  # a worker, but no manager
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        async with BusClient(bus.comm()) as client:
            reply = await client.request("commands", CommandSubmit(
                text="true", repo=str(repo), type=CommandType.RUN, role="manager"))
            sid = reply.body.session_id

            async def waiting():
                st = await session_state(client, sid)
                return st.tasks[0].meta.get("waiting")
            started = time.monotonic()
            shown = await wait_for(waiting, 10, "the waiting reason")
            assert shown["reason"] == "no agent with role manager"
            assert time.monotonic() - started < 3

            async def ended():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None
            st = await wait_for(ended, 20, "the session to end")
            assert st.session.state.value == "failed"
            assert "no agent with role manager" in st.session.detail

    asyncio.run(go())
