"""A retried Claude Code task that lands on another agent (another host's session store)
resumes its previous attempt's session: the new agent fetches the transcript from the
agent that ran it (claude.transcript_get) and the CLI continues the conversation."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandCancel, CommandSubmit, CommandType
from services.model_server.server import ModelServer
from tests.integration.test_bus_flow import session_state, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "model_scripts" / "resume_elsewhere.yaml"


def start_worker(procs, args: list[str], name: str, data: Path, env: dict[str, str]):
    """A Claude Code worker with a data directory (so a session store) of its own."""
    proc = procs.start(name, [sys.executable, "-m", "services.agent", *args, "--role", "worker",
                              "--name", name, "--set", f'data_dir="{data}"'], env=env)
    procs.ready(proc)
    return proc


@pytest.mark.bus(heartbeat=0.5, liveness=6)
@pytest.mark.timeout(180)
def test_a_retry_on_another_agent_resumes_the_session_it_fetched(procs, bus, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the first half is done\n")
    with ModelServer([SCRIPT]) as model:
        args = bus.args() + ["--set", 'agent_hierarchy.worker.executor="claude"',
                             "--set", "agent_hierarchy.worker.max_turns=1",
                             "--set", 'agent_hierarchy.worker.allowed_tools=["Read"]',
                             "--set", "orchestrator.retry_backoff=1.0"]
        for m in ("services.commands", "services.orchestrator", "services.distributor"):
            procs.ready(procs.service(m, *args))
        env = {"CCAA_MODEL_BASE_URL": model.url}
        start_worker(procs, args, "w-a", tmp_path / "host-a", env)

        async def go():
            async with BusClient(bus.comm()) as client:
                async def submit(text: str, priority: int) -> str:
                    reply = await client.request("commands", CommandSubmit(
                        text=text, repo=str(work), type=CommandType.RUN, priority=priority))
                    return reply.body.session_id

                # w-a runs the first attempt (out of turns after reading notes.txt), then
                # the held session keeps it busy while the retry waits out its backoff
                s1 = await submit("XHOST-RESUME: finish the notes", 5)
                s2 = await submit("XHOST-HOLD: wait", 0)

                async def held():
                    st = await session_state(client, s2)
                    return st.tasks[0].state.value == "running" or None

                await wait_for(held, 60, "the held session running on w-a", interval=0.1)
                first = (await session_state(client, s1)).tasks[0]
                assert first.attempt == 1 and first.result["agent_id"] == "w-a", first
                assert first.meta["resume_session"]
                # another host's agent joins: the retry can only go there
                start_worker(procs, args, "w-b", tmp_path / "host-b", env)

                async def done():
                    st = await session_state(client, s1)
                    return st if st.session.state.value != "running" else None

                final = await wait_for(done, 90, "the retried session", interval=0.2)
                await client.request("orchestrator", CommandCancel(session_id=s2))
                return final

        final = asyncio.run(go())
        requests = model.messages()

    task = final.tasks[0]
    assert final.session.state.value == "succeeded", (final.session.detail, task.result)
    assert task.attempt == 2 and task.agent_id == "w-b", task
    data = task.result["data"]
    assert data["resume_mode"] == "fetched", data
    assert data["session_id"] == task.meta["resume_session"]
    assert "Resumed where the first attempt stopped" in data["result"]
    # the CLI on w-b continued the conversation: attempt 1's tool call and its result
    last = [r for r in requests if "XHOST-RESUME" in str(r.body["messages"][0])][-1]
    texts = str(last.body["messages"])
    assert "notes.txt" in texts and "the first half is done" in texts, texts[-2000:]
    # the transcript now lives in w-b's session store too
    assert list((tmp_path / "host-b" / "claude" / "projects").glob(
        f"*/{data['session_id']}.jsonl"))
