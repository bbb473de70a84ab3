"""Branches do not pile up: a task that changed nothing leaves no branch once its session
ends, and `ccaa prune` deletes what sessions over for a while left (and branches of
sessions the orchestrator forgot), never a running session's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.cli import run_cli
from tests.integration.test_bus_flow import session_state, start_agent, start_services, wait_for


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def branches(repo) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/ccaa/")
               .split())


@pytest.mark.timeout(120)
def test_no_op_branches_go_and_prune_deletes_old_sessions_branches(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    start_agent(procs, bus, "agent-b")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    git(repo, "branch", "ccaa/s-forgotten/t-1")  # left by a session long pruned

    async def run() -> tuple[str, str, str, str]:
        async with BusClient(bus.comm()) as client:
            async def submit(text: str) -> str:
                return (await client.request("commands", CommandSubmit(
                    text=text, repo=str(repo), type=CommandType.RUN))).body.session_id

            noop, work = await submit("true"), await submit("echo hi > made.txt")

            async def cleaned() -> bool:
                for sid in (noop, work):
                    st = await session_state(client, sid)
                    if not any(h["kind"] == "cleanup" for h in st.history):
                        return False
                return True
            await wait_for(cleaned, 60, "both sessions to end and clean up")
            running = await submit("sleep 60")

            async def started():
                st = await session_state(client, running)
                return st.tasks and st.tasks[0].state.value == "running" and st
            st = await wait_for(started, 30, "the long task to run")
            work_task = (await session_state(client, work)).tasks[0].task_id
            return noop, work, f"ccaa/{work}/{work_task}", \
                f"ccaa/{running}/{st.tasks[0].task_id}"

    noop, work, work_branch, running_branch = asyncio.run(run())
    now = branches(repo)
    assert not any(b.startswith(f"ccaa/{noop}/") for b in now), now  # changed nothing
    assert work_branch in now and running_branch in now

    # recent sessions are kept; once over for longer than --older-than, their branches go
    recent = run_cli(procs, bus, "prune", "--repo", str(repo), "--dry-run", "--json")
    assert recent.returncode == 0, recent.stderr
    assert json.loads(recent.stdout)["would_delete"] == ["ccaa/s-forgotten/t-1"]
    deadline = time.monotonic() + 20
    while True:
        dry = json.loads(run_cli(procs, bus, "prune", "--repo", str(repo), "--older-than", "1s",
                                 "--dry-run", "--json").stdout)
        if work_branch in dry["would_delete"]:
            break
        assert time.monotonic() < deadline, dry
        time.sleep(0.2)  # wait-ok: until the session ended more than a second ago
    assert branches(repo) == now  # a dry run deletes nothing
    done = run_cli(procs, bus, "prune", "--repo", str(repo), "--older-than", "1s")
    assert done.returncode == 0, done.stderr
    assert f"deleted {work_branch}" in done.stdout
    assert branches(repo) == {running_branch}  # the running session's branch stays
