"""An agent tells a task's owner and its distributor it took the task (task.accepted) only
once the attempt has run for a moment: a quick attempt is told by its result alone to the
owner, which records the same states, and by its release alone to the distributor; a
longer one is seen running while it runs."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from libs.client import BusClient
from libs.events import EventSubscriber
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import read_db, start_agent, start_services


def received(metrics_url: str, type_: str) -> float:
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(rf'ccaa_messages_received_total{{type="{re.escape(type_)}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(90)
def test_quick_attempts_are_told_by_their_result_long_ones_are_seen_running(
        procs, bus, tmp_path):
    ready = start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    orchestrator = ready["services.orchestrator"]["metrics"]
    distributor = ready["services.distributor"]["metrics"]
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        seen: list[tuple[str, str]] = []  # (topic, session) in the order they came
        ended: dict[str, asyncio.Event] = {}

        def on_event(topic, msg):
            sid = msg.body.session_id
            seen.append((topic, sid))
            if topic.startswith("session.") and topic != "session.running":
                ended.setdefault(sid, asyncio.Event()).set()

        sub = EventSubscriber(bus.comm().sub(), ["task.", "session."], on_event)
        sub.start()
        await asyncio.sleep(0.3)  # wait-ok: the subscription reaching the hub's XPUB
        try:
            async with BusClient(bus.comm()) as client:
                async def run(text: str) -> str:
                    reply = await client.request("commands", CommandSubmit(
                        text=text, repo=str(repo), type=CommandType.RUN))
                    sid = reply.body.session_id
                    await asyncio.wait_for(ended.setdefault(sid, asyncio.Event()).wait(), 30)
                    return sid

                def told() -> tuple[float, ...]:
                    return (received(orchestrator, "task.accepted"),
                            received(distributor, "task.accepted"),
                            received(distributor, "task.released"))

                quick = [await run("true") for _ in range(3)]
                told_quick = told()
                slow = await run("sleep 1")
                told_slow = told()
        finally:
            await sub.close()
        return seen, quick, slow, told_quick, told_slow

    seen, quick, slow, told_quick, told_slow = asyncio.run(go())
    # `true` ends within the notice delay: no task.accepted at all; its assignment is
    # answered by its release, one message
    assert told_quick == (0, 0, 3)
    assert told_slow == (1, 1, 4)
    topics = [t for t, sid in seen if sid == slow]
    # the long attempt was seen running while it ran, before it ended
    assert topics.index("task.running") < topics.index("task.succeeded")
    with read_db(bus) as db:
        for sid in [*quick, slow]:
            states = [r["to_state"] for r in db.execute(
                "SELECT e.to_state FROM events e WHERE e.session_id=? AND e.kind='task' "
                "ORDER BY e.id", (sid,))]
            assert states == ["ready", "queued", "assigned", "running", "succeeded"], sid
            row = db.execute("SELECT agent_id, started_at FROM tasks WHERE session_id=?",
                             (sid,)).fetchone()
            assert row["agent_id"] == "agent-a" and row["started_at"] > 0
