"""The real path with real processes on ephemeral ports:
commands -> orchestrator -> distributor -> hub -> agent -> orchestrator."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from libs.client import BusClient
from libs.events import EventSubscriber
from protocols.command import CommandStatus, CommandSubmit, CommandType
from protocols.peer import PeerKind, RegistryList

SERVICES = ("services.commands", "services.orchestrator", "services.distributor",
            "services.reporter")


def start_services(procs, bus) -> dict[str, dict]:
    started = {m: procs.service(m, *bus.args()) for m in SERVICES}
    return {m: procs.ready(p) for m, p in started.items()}


def start_agent(procs, bus, name: str):
    proc = procs.service("services.agent", *bus.args(), "--name", name, name=name)
    procs.ready(proc)
    return proc


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)  # wait-ok: polling a condition under a deadline


async def session_state(client: BusClient, session_id: str):
    reply = await client.request("orchestrator", CommandStatus(session_id=session_id))
    return reply.body


def read_db(bus) -> sqlite3.Connection:
    conn = sqlite3.connect(str(Path(bus.data_dir) / "orchestrator.db"))
    conn.row_factory = sqlite3.Row
    return conn


@pytest.mark.timeout(60)
def test_task_completes_through_the_real_path(procs, bus, tmp_path):
    ready = start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        async with BusClient(bus.comm()) as client:
            reply = await client.request("hub", RegistryList())
            names = {p.name: p.kind for p in reply.body.peers}
            assert {"commands", "orchestrator", "distributor", "reporter"} <= set(names)
            assert names["agent-a"] == PeerKind.AGENT

            accepted = await client.request("commands", CommandSubmit(
                text="echo built > artifact.txt && echo finished", repo=str(repo),
                type=CommandType.RUN))
            sid = accepted.body.session_id

            async def done():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None

            return await wait_for(done, 30, "the session to finish")

    status = asyncio.run(go())
    assert status.session.state.value == "succeeded"
    (task,) = status.tasks
    assert task.state.value == "succeeded" and task.agent_id == "agent-a"
    assert task.result["exit_code"] == 0 and "finished" in task.result["stdout"]
    assert (repo / "artifact.txt").read_text() == "built\n"

    with read_db(bus) as db:
        states = [r["to_state"] for r in db.execute(
            "SELECT to_state FROM events WHERE task_id=? ORDER BY id", (task.task_id,))]
        assert states == ["ready", "queued", "assigned", "running", "succeeded"]
        row = db.execute("SELECT state FROM sessions").fetchone()
        assert row["state"] == "succeeded"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    # the reporter saw the events and exposes them on /metrics and /api/summary
    reporter_metrics = ready["services.reporter"]["metrics"]

    def summary():
        with urllib.request.urlopen(reporter_metrics + "/api/summary", timeout=5) as r:
            return json.loads(r.read())

    deadline = time.monotonic() + 10
    while summary()["tasks_by_state"].get("succeeded") != 1:
        assert time.monotonic() < deadline, summary()
        time.sleep(0.05)  # wait-ok: polling an HTTP endpoint under a deadline
    with urllib.request.urlopen(reporter_metrics + "/", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert 'getJSON("/api/summary")' in r.read().decode()  # live dashboard
    # the counts come from the orchestrator's database (a reporter restart changes nothing)
    deadline = time.monotonic() + 10
    while summary()["counts_from"] != "orchestrator":
        assert time.monotonic() < deadline, summary()
        time.sleep(0.05)  # wait-ok: polling an HTTP endpoint under a deadline
    assert summary()["sessions_by_state"] == {"succeeded": 1}
    with urllib.request.urlopen(f"{reporter_metrics}/api/session/{status.session.session_id}",
                                timeout=5) as r:
        status = json.loads(r.read())
    assert status["session"]["state"] == "succeeded"
    assert [t["task_id"] for t in status["tasks"]] == [task.task_id]
    with urllib.request.urlopen(reporter_metrics + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'ccaa_events_total{topic="session.succeeded"} 1.0' in text
    assert "ccaa_tasks{" not in text  # counted by the orchestrator, from its database
    with urllib.request.urlopen(ready["services.orchestrator"]["metrics"] + "/metrics",
                                timeout=5) as r:
        text = r.read().decode()
    assert 'ccaa_tasks{state="succeeded"} 1.0' in text
    assert 'ccaa_sessions{state="succeeded"} 1.0' in text
    assert 'ccaa_task_duration_seconds_count{kind="run",role="worker",state="succeeded"} 1.0' \
        in text
    assert 'ccaa_attempt_duration_seconds_count{kind="run",outcome="succeeded",role="worker"} ' \
        '1.0' in text
    assert "process_resident_memory_bytes" in text  # process collectors


@pytest.mark.timeout(90)
def test_killed_agent_is_lost_in_time_and_its_task_completes_elsewhere(procs, bus, tmp_path):
    start_services(procs, bus)
    victim = start_agent(procs, bus, "agent-victim")
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = repo / "attempts.txt"
    # first attempt blocks on a fifo-less wait; any later attempt completes quickly
    command = (f"echo $$ >> {marker}; "
               f"if [ $(wc -l < {marker}) -eq 1 ]; then sleep 60; fi; echo ok")

    async def go():
        lost_at: list[float] = []
        running = asyncio.Event()
        lost = asyncio.Event()

        def on_event(topic, msg):
            if topic == "agent.lost" and msg.body.name == "agent-victim":
                lost_at.append(time.monotonic())
                lost.set()
            if topic == "task.running":
                running.set()

        sub = EventSubscriber(bus.sub, ["agent.lost", "task.running"], on_event)
        sub.start()
        try:
            async with BusClient(bus.comm()) as client:
                accepted = await client.request("commands", CommandSubmit(
                    text=command, repo=str(repo), type=CommandType.RUN))
                sid = accepted.body.session_id
                await asyncio.wait_for(running.wait(), 20)
                st = await session_state(client, sid)
                assert st.tasks[0].agent_id == "agent-victim"

                start_agent(procs, bus, "agent-survivor")
                for child in psutil.Process(victim.pid).children(recursive=True):
                    procs.extra_pids.add(child.pid)  # the orphaned command, for cleanup
                killed_at = time.monotonic()
                procs.kill(victim)  # SIGKILL, no goodbye
                await asyncio.wait_for(lost.wait(), 10)
                budget = bus.heartbeat * bus.liveness
                # detection: silent for > budget, checked every heartbeat/2
                assert lost_at[0] - killed_at <= budget + bus.heartbeat + 0.5

                async def done():
                    s = await session_state(client, sid)
                    return s if s.session.state.value != "running" else None

                return await wait_for(done, 30, "the session to finish")
        finally:
            await sub.close()

    status = asyncio.run(go())
    assert status.session.state.value == "succeeded"
    task = status.tasks[0]
    assert task.agent_id == "agent-survivor"
    assert task.attempt == 2
    with read_db(bus) as db:
        attempts = db.execute("SELECT agent_id, state FROM attempts WHERE task_id=? ORDER BY n",
                              (task.task_id,)).fetchall()
        assert [(a["agent_id"], a["state"]) for a in attempts] == [
            ("agent-victim", "lost"), ("agent-survivor", "succeeded")]


@pytest.mark.timeout(60)
@pytest.mark.bus(heartbeat=2.0, liveness=5)  # 10 s before the hub would drop it as silent
def test_a_stopped_service_says_goodbye_and_is_out_of_the_registry_at_once(procs, bus):
    # its goodbye is the last message of a process that exits right after: it must still
    # leave (a lost one left `ccaa status` listing a node's controller after `ccaa down`)
    name = "distributor"
    for round_ in range(3):
        proc = procs.service("services.distributor", *bus.args(), name=f"{name}-{round_}")
        procs.ready(proc)

        async def listed() -> set[str]:
            async with BusClient(bus.comm()) as client:
                reply = await client.request("hub", RegistryList())
                return {p.name for p in reply.body.peers}

        assert name in asyncio.run(listed())
        stopped_at = time.monotonic()
        proc.terminate()
        assert proc.wait(20) == 0
        assert name not in asyncio.run(listed())
        assert time.monotonic() - stopped_at < bus.heartbeat * bus.liveness
