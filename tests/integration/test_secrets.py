"""Credentials given to agents stay with the agents: a task (or gate) command that prints
its whole environment finds none of them, so they reach no result, database row, log,
event or HTTP answer. A role can still pass a named variable through on purpose."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from pathlib import Path

import pytest

from libs.client import BusClient
from libs.events import EventSubscriber
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import SERVICES, session_state, wait_for

SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-api03-do-not-leak-7f3a9c",
           "AWS_SECRET_ACCESS_KEY": "aws-do-not-leak-51c0e2",
           "GITHUB_TOKEN": "ghp_do-not-leak-9a8b7c"}


@pytest.mark.timeout(90)
def test_an_agents_credentials_reach_no_result_log_event_or_http_answer(procs, bus, tmp_path):
    ready = {m: procs.ready(procs.service(m, *bus.args())) for m in SERVICES}
    agent = procs.start("agent-secret", [
        sys.executable, "-m", "services.agent", *bus.args(), "--name", "agent-secret",
        "--set", 'agent_hierarchy.worker.env_passthrough=["BUILD_FLAVOUR"]'],
        env={**SECRETS, "BUILD_FLAVOUR": "passed-on-purpose"})
    procs.ready(agent)
    repo = tmp_path / "repo"
    repo.mkdir()
    seen_events: list[bytes] = []

    async def go():
        sub = EventSubscriber(bus.sub, [""], lambda topic, msg: seen_events.append(
            (topic + repr(msg)).encode()))
        sub.start()
        try:
            async with BusClient(bus.comm()) as client:
                reply = await client.request("commands", CommandSubmit(
                    text="env; echo HOME=$HOME; echo flavour=$BUILD_FLAVOUR", repo=str(repo),
                    type=CommandType.RUN))
                sid = reply.body.session_id

                async def done():
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None
                return await wait_for(done, 30, "the session to finish")
        finally:
            await sub.close()

    status = asyncio.run(go())
    assert status.session.state.value == "succeeded"
    out = status.tasks[0].result["stdout"]
    assert "PATH=" in out and "HOME=/" in out  # a working environment...
    assert "flavour=passed-on-purpose" in out  # ...with what the role passes on purpose
    with urllib.request.urlopen(ready["services.reporter"]["metrics"] + "/api/summary",
                                timeout=5) as r:
        summary = r.read()
    with urllib.request.urlopen(ready["services.reporter"]["metrics"] + "/metrics",
                                timeout=5) as r:
        metrics = r.read()
    stored = [p.read_bytes() for p in Path(bus.data_dir).rglob("*") if p.is_file()]
    logs = [p.read_bytes() for p in (tmp_path / "logs").glob("*.log")]
    for name, secret in SECRETS.items():
        assert secret not in out and name not in out
        for blob in [summary, metrics, *stored, *logs, *seen_events]:
            assert secret.encode() not in blob, name
    assert seen_events, "the subscriber saw the session's events"
