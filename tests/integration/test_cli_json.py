"""`--json` on sessions, logs, cancel, submit and watch: one JSON document on stdout, the
reply's own fields, so scripts need not parse the tables; `--wait` is compact unless -v."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.cli import run_cli
from tests.integration.test_bus_flow import session_state, start_agent, start_services, wait_for


def run_json(procs, bus, *args: str) -> tuple[int, dict]:
    done = run_cli(procs, bus, *args, "--json", timeout=30)
    assert not done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.mark.timeout(90)
def test_sessions_logs_and_cancel_speak_json(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()

    async def submit():
        async with BusClient(bus.comm()) as client:
            done = (await client.request("commands", CommandSubmit(
                text="echo from-json", repo=str(repo), type=CommandType.RUN))).body.session_id

            async def ended():
                st = await session_state(client, done)
                return st.session.state.value != "running" and st
            st = await wait_for(ended, 30, "the first session")
            slow = (await client.request("commands", CommandSubmit(
                text="sleep 30", repo=str(repo), type=CommandType.RUN))).body.session_id
            return done, st.tasks[0].task_id, slow
    done, task_id, slow = asyncio.run(submit())

    code, listed = run_json(procs, bus, "sessions", "--limit", "10")
    assert code == 0
    states = {s["session_id"]: s["state"] for s in listed["sessions"]}
    assert states[done] == "succeeded" and slow in states

    code, logs = run_json(procs, bus, "logs", task_id)
    assert code == 0 and logs["task"]["task_id"] == task_id
    assert [a["result"]["exit_code"] for a in logs["attempts"]] == [0]
    assert "from-json" in logs["attempts"][0]["result"]["stdout"]

    code, cancelled = run_json(procs, bus, "cancel", slow)
    assert code == 0 and cancelled["session"]["state"] == "cancelled"


@pytest.mark.timeout(90)
def test_submit_and_watch_speak_json_and_wait_is_compact_unless_verbose(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()
    code, accepted = run_json(procs, bus, "submit", "RUN", "echo one", "--repo", str(repo))
    assert code == 0 and accepted["type"] == "RUN" and accepted["session_id"]
    code, final = run_json(procs, bus, "watch", accepted["session_id"], "--timeout", "60")
    assert code == 0 and final["session"]["state"] == "succeeded"
    code, final = run_json(procs, bus, "submit", "RUN", "exit 4", "--repo", str(repo),
                           "--wait", "--wait-timeout", "60")
    assert code == 1 and final["session"]["state"] == "failed"
    assert final["tasks"][0]["result"]["exit_code"] == 4

    # --wait: each task's start and end; -v: every state too
    compact = run_cli(procs, bus, "submit", "RUN", "echo two", "--repo", str(repo), "--wait",
                      "--wait-timeout", "60")
    verbose = run_cli(procs, bus, "submit", "RUN", "echo three", "--repo", str(repo),
                      "--wait", "--wait-timeout", "60", "-v")
    assert compact.returncode == 0 and verbose.returncode == 0
    for state in ("running", "succeeded"):
        assert f" {state}" in compact.stdout and f" {state}" in verbose.stdout
    for state in ("queued", "assigned"):  # as a task's line (the counts line may say queued)
        line = re.compile(rf"^\S+ task \S+ {state} ", re.M)
        assert not line.search(compact.stdout), compact.stdout
        assert line.search(verbose.stdout), verbose.stdout
    assert len(compact.stdout.splitlines()) < len(verbose.stdout.splitlines())
