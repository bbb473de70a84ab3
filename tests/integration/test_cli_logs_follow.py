"""`ccaa logs -f TASK` against real services: the task's attempts so far, then its live
output and state changes as they happen, ending with the task (exit 0 if it succeeded,
1 if not); an unknown task is refused at once; `--service` reads a service's log."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from libs.client import BusClient
from protocols.command import CommandStatus, CommandSubmit, CommandType
from tests.integration.cli import run_cli, start_cli
from tests.integration.test_bus_flow import start_agent, start_services, wait_for


async def submit(bus, repo, text: str) -> str:
    """Submit a RUN session; its task's id once the task exists."""
    async with BusClient(bus.comm()) as client:
        sid = (await client.request("commands", CommandSubmit(
            text=text, repo=str(repo), type=CommandType.RUN))).body.session_id

        async def task_id():
            st = (await client.request("orchestrator", CommandStatus(session_id=sid))).body
            return st.tasks[0].task_id if st.tasks else None

        return await wait_for(task_id, 20, "the session's task")


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """The follower's lines up to the first that holds ``marker`` (its end if none)."""
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if marker in line:
            break
    return lines


@pytest.mark.timeout(90)
def test_logs_follow_prints_live_output_and_ends_with_the_task(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()
    # the task waits for the follower: it goes on only once the first line was printed
    gate = tmp_path / "go"
    task = asyncio.run(submit(bus, repo, f"echo tick-one; while [ ! -e {gate} ]; do "
                                         "sleep 0.05; done; echo tick-two; exit 3"))
    follower = start_cli(procs, bus, "logs", "-f", task, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = read_until(follower, "tick-one")
    assert any("tick-one" in line for line in first), first
    gate.touch()
    out, err = follower.communicate(timeout=30)
    lines = first + out.splitlines()
    assert follower.returncode == 1, (lines, err)  # the task failed (exit 3)
    # live: the second output line and the end, as events, after the first
    live = lines[len(first):]
    assert any("[agent-a] output: tick-two" in line for line in live), lines
    assert any(" failed" in line for line in live), lines
    assert any("exit code 3" in line or "exit_code" in line or "exit 3" in line
               for line in live), lines  # the final attempts view

    # a task that has ended: its attempts, and the follower ends at once with its outcome
    done = run_cli(procs, bus, "logs", "-f", task, timeout=30)
    assert done.returncode == 1 and "tick-two" in done.stdout

    unknown = run_cli(procs, bus, "logs", "-f", "t-nope", timeout=30)
    assert unknown.returncode == 3 and "no task" in unknown.stderr


@pytest.mark.timeout(60)
def test_logs_of_a_service_on_this_host(procs, bus, tmp_path):
    logs_dir = bus.data_dir / "run" / "logs"
    logs_dir.mkdir(parents=True)
    (logs_dir / "orchestrator.log").write_text(
        '{"ts": "T", "level": "info", "service": "orchestrator", "event": "ready"}\n'
        '{"ts": "T", "level": "error", "service": "orchestrator", "event": "boom",'
        ' "why": "disk full"}\n')
    done = run_cli(procs, bus, "logs", "--service", "orchestrator", "-n", "1", timeout=30)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ['T error   orchestrator boom why="disk full"']
    raw = run_cli(procs, bus, "logs", "--service", "orchestrator", "--json", timeout=30)
    assert raw.stdout.count('"event"') == 2
    missing = run_cli(procs, bus, "logs", "--service", "nothing", timeout=30)
    assert missing.returncode == 3 and "orchestrator" in missing.stderr  # what there is
