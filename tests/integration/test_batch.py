"""`ccaa batch`: many commands in one request, run by real agents; all or nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from libs.client import BusClient, batches
from protocols.command import MAX_BATCH, CommandSubmit, CommandType, SessionList
from tests.integration.cli import run_cli
from tests.integration.test_bus_flow import start_agent, start_services


async def session_count(bus) -> int:
    async with BusClient(bus.comm()) as client:
        reply = await client.request("orchestrator", SessionList(limit=1000))
        return len(reply.body.sessions)


@pytest.mark.timeout(120)
def test_batch_runs_every_command_and_refuses_a_bad_batch_whole(procs, bus, tmp_path):
    start_services(procs, bus)
    for name in ("agent-a", "agent-b"):
        start_agent(procs, bus, name)
    repo = tmp_path / "repo"
    repo.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    lines = [f"echo {i} > out{i}.txt" for i in range(12)]
    lines.insert(3, "# a comment, skipped")
    lines.append(json.dumps({"text": "echo there > there.txt", "repo": str(other)}))
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n\n")

    done = run_cli(procs, bus, "batch", str(tmp_path / "tasks.txt"), "--type", "RUN",
                   "--repo", str(repo),
                "--wait", "--wait-timeout", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr + procs.logs()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["sessions"]) == 13 and result["all_ended"] is True
    assert set(result["states"].values()) == {"succeeded"}
    assert "13/13 ended: 13 succeeded" in done.stderr
    for i in range(12):
        assert (repo / f"out{i}.txt").read_text() == f"{i}\n"
    assert (other / "there.txt").read_text() == "there\n"

    # one command the commands service refuses: none of the batch becomes a session
    before = asyncio.run(session_count(bus))
    bad = "echo a\n" + json.dumps({"text": "echo b", "repo": str(tmp_path / "missing")}) + "\n"
    refused = run_cli(procs, bus, "batch", "-", "--type", "RUN", "--repo", str(repo), stdin=bad)
    assert refused.returncode == 3
    assert "command 2 of 2" in refused.stderr and "not a directory" in refused.stderr
    assert refused.stdout == ""
    assert asyncio.run(session_count(bus)) == before

    # a line that is no command at all is named before anything is sent
    wrong = run_cli(procs, bus, "batch", "-", stdin='echo fine\n{"text": "x", "priority": 500}\n')
    assert wrong.returncode == 2 and "line 2: priority" in wrong.stderr, wrong.stderr
    assert asyncio.run(session_count(bus)) == before


def test_long_batches_are_split_by_count_and_size():
    small = [CommandSubmit(text="x", repo="/r", type=CommandType.RUN)] * (MAX_BATCH * 2 + 1)
    assert [len(p) for p in batches(small)] == [MAX_BATCH, MAX_BATCH, 1]
    big = [CommandSubmit(text="y" * 90_000, repo="/r")] * 50
    parts = batches(big, max_bytes=1_000_000)
    assert sum(len(p) for p in parts) == 50 and all(len(p) <= 11 for p in parts)
