"""Code over the bus: an agent that takes its repository from the bus (code_transfer.mode
= "always", so one machine can run it) works in a worktree of its host's cache, sends its
branch back into the user's repository, and fetches only what its cache lacks later."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import start_services, session_state, wait_for


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(path: Path, files: int = 3) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "dev")
    for i in range(files):
        (path / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return path


def start_remote_agent(procs, bus, name: str, data: Path):
    """An agent with a data directory of its own, taking code only over the bus."""
    proc = procs.service("services.agent", *bus.args(), "--name", name,
                         "--set", f'data_dir="{data}"',
                         "--set", 'code_transfer.mode="always"',
                         "--set", "code_transfer.chunk_kb=4",  # many chunks, even here
                         "--set", "code_transfer.credit=3", name=name)
    procs.ready(proc)
    return proc


async def run(client: BusClient, repo: Path, text: str):
    accepted = await client.request("commands", CommandSubmit(
        text=text, repo=str(repo), type=CommandType.RUN))
    sid = accepted.body.session_id

    async def done():
        st = await session_state(client, sid)
        return st if st.session.state.value != "running" else None

    return await wait_for(done, 60, "the session to finish")


@pytest.mark.timeout(120)
def test_an_agent_works_from_the_bus_and_its_branch_comes_back(procs, bus, tmp_path):
    start_services(procs, bus)
    data = tmp_path / "remote"
    start_remote_agent(procs, bus, "agent-remote", data)
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")

    async def go():
        async with BusClient(bus.comm()) as client:
            first = await run(client, repo, "printf 'made remotely' > made.txt && pwd")
            second = await run(client, repo, "printf 'again' > again.txt")
            return first, second

    first, second = asyncio.run(go())
    assert first.session.state.value == "succeeded", first
    (task,) = first.tasks
    data1 = task.result["data"]
    # it ran in a worktree of this host's cache, not in the user's repository
    assert data1["code"] == "transferred"
    assert str(data) in task.result["stdout"] and str(repo) not in task.result["stdout"]
    assert not (repo / "made.txt").exists()
    assert git(repo, "worktree", "list").count("\n") == 0  # only the user's own checkout
    # the branch came back into the user's repository with the work on it
    branch = f"ccaa/{first.session.session_id}/{task.task_id}"
    assert data1["branch"] == branch and data1["sent_bytes"] > 0
    assert git(repo, "rev-parse", branch) == data1["commit"]
    assert git(repo, "show", f"{branch}:made.txt") == "made remotely"
    assert git(repo, "rev-parse", f"{branch}~1") == base
    caches = list((data / "repos").iterdir())
    assert len([c for c in caches if c.is_dir()]) == 1
    # the worktree in the cache went once the branch was back, and so did the branch
    assert not any((data / "worktrees").rglob("made.txt"))
    cache = next(c for c in caches if c.is_dir())
    assert git(cache, "branch", "--list", "ccaa/*") == ""

    # the second task needed nothing new: the cache had the base already
    (task2,) = second.tasks
    assert second.session.state.value == "succeeded"
    assert git(repo, "show", f"ccaa/{second.session.session_id}/{task2.task_id}:again.txt") \
        == "again"
    logs = json.dumps(task2.result["data"])
    assert task2.result["data"]["code"] == "transferred", logs
