"""ANALYZE_PROJECT through `ccaa submit`'s path with a real Claude Code architect against
the scripted model server; a repeated request on the same commit reuses the analysis."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from services.cli import sample_repo
from services.model_server.server import ModelServer
from tests.integration.test_bus_flow import session_state, wait_for

SCRIPTS = Path(__file__).resolve().parents[2] / "services" / "model_server" / "scripts"


@pytest.mark.bus(heartbeat=0.5, liveness=6)
@pytest.mark.timeout(180)
def test_analysis_by_claude_and_its_cache(procs, bus, tmp_path):
    repo = tmp_path / "calc"
    sample_repo.create(repo)
    with ModelServer([SCRIPTS / "demo.yaml"]) as model:
        args = bus.args() + ["--set", 'agent_hierarchy.architect.executor="claude"']
        for m in ("services.commands", "services.orchestrator", "services.distributor"):
            procs.ready(procs.service(m, *args))
        agent = procs.start("architect", [sys.executable, "-m", "services.agent", *args,
                                          "--role", "architect", "--name", "arch-1"],
                            env={"CCAA_MODEL_BASE_URL": model.url})
        procs.ready(agent)

        async def run(text: str):
            async with BusClient(bus.comm()) as client:
                acc = await client.request("commands", CommandSubmit(
                    text=text, repo=str(repo), type=CommandType.ANALYZE_PROJECT))
                sid = acc.body.session_id

                async def done():
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None

                return await wait_for(done, 120, "the analysis", interval=0.1)

        first = asyncio.run(run("Analyse the structure and the risks"))
        conversations = len(model.conversations())
        second = asyncio.run(run("Analyse the structure and the risks"))

    assert first.session.state.value == "succeeded", first.session.detail
    (task,) = first.tasks
    data = task.result["data"]
    assert task.kind == "analyze" and task.role == "architect"
    assert "calc is a tiny arithmetic package" in data["result"]
    assert data["num_turns"] == 2 and data["is_error"] is False
    assert data["usage"]["input_tokens"] == 2200 + 2600
    assert data["usage"]["output_tokens"] == 40 + 180
    assert first.session.cost_usd == pytest.approx(data["total_cost_usd"])

    # same commit, same request: answered from the first session, no model traffic
    assert second.session.state.value == "succeeded"
    assert second.tasks == [] and first.session.session_id in second.session.detail
    assert second.session.report["analysis"] == data["result"]
    assert len(model.conversations()) == conversations
