"""An agent's result is acknowledged once and then never sent again: the owner's ack is a
reply to a message the agent did not wait on, and must still reach the agent."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import session_state, start_services, wait_for


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(60)
def test_each_result_is_sent_once_when_acknowledged(procs, bus, tmp_path):
    ready = start_services(procs, bus)
    agent = procs.service("services.agent", *bus.args(), "--name", "agent-a", name="agent-a")
    agent_metrics = procs.ready(agent)["metrics"]
    orchestrator_metrics = ready["services.orchestrator"]["metrics"]
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        async with BusClient(bus.comm()) as client:
            accepted = await client.submit_many([CommandSubmit(
                text=f"echo {i}", repo=str(repo), type=CommandType.RUN) for i in range(4)])
            for acc in accepted:
                async def ended(sid=acc.session_id):
                    st = await session_state(client, sid)
                    return st.session.state.value != "running" and st
                assert (await wait_for(ended, 30, "the session")).session.state.value == \
                    "succeeded"

    asyncio.run(go())
    deadline = time.monotonic() + 10
    while metric(agent_metrics, "ccaa_agent_results_unacked") != 0:
        assert time.monotonic() < deadline, "the agent never saw its results acknowledged"
        time.sleep(0.05)  # wait-ok: polling a metric under a deadline
    # the bus fixture resends unacknowledged results every 0.5 s: three periods of quiet
    # show none is sent again
    time.sleep(1.5)  # wait-ok: observing that nothing more happens
    received = 'ccaa_messages_received_total{type="task.result"}'
    assert metric(orchestrator_metrics, received) == 4
