"""Ctrl-C in `ccaa submit --wait` says the session goes on and how to see or stop it (no
traceback, exit 130, the session still running); a closed output pipe ends a command
quietly (exit 141, nothing on stderr)."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from libs.client import BusClient
from protocols.command import CommandCancel, CommandSubmit, CommandType
from tests.conftest import ROOT
from tests.integration.cli import run_cli, start_cli
from tests.integration.test_bus_flow import session_state, start_agent, start_services


@pytest.mark.timeout(90)
def test_ctrl_c_while_waiting_leaves_the_session_running_and_says_so(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = start_cli(procs, bus, "submit", "RUN", "sleep 30", "--repo", str(repo), "--wait",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while "accepted" not in line:
            assert time.monotonic() < deadline, "no acceptance line"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
        sid = re.search(r"session (s-\w+)", line).group(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"session {sid} goes on" in err and f"ccaa cancel {sid}" in err

    async def still_running_then_cancel():
        async with BusClient(bus.comm()) as client:
            st = await session_state(client, sid)
            assert st.session.state.value == "running"
            await client.request("orchestrator", CommandCancel(session_id=sid))
    asyncio.run(still_running_then_cancel())


@pytest.mark.timeout(60)
def test_a_closed_output_pipe_ends_a_command_quietly(procs, bus, tmp_path):
    start_services(procs, bus)
    repo = tmp_path / "repo"
    repo.mkdir()

    async def some_sessions():
        async with BusClient(bus.comm()) as client:
            await client.submit_many([CommandSubmit(text=f"echo {i}", repo=str(repo),
                                                    type=CommandType.RUN) for i in range(30)])
    asyncio.run(some_sessions())
    proc = start_cli(procs, bus, "sessions", "--limit", "30", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    try:
        err = proc.stderr.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 141, err
    assert err == ""


@pytest.mark.timeout(90)
def test_watch_follows_an_earlier_session_to_its_end(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()

    async def submit() -> str:
        async with BusClient(bus.comm()) as client:
            reply = await client.request("commands", CommandSubmit(
                text="sleep 1; echo watched > out.txt", repo=str(repo), type=CommandType.RUN))
            return reply.body.session_id
    sid = asyncio.run(submit())
    done = run_cli(procs, bus, "watch", sid, "--timeout", "60", timeout=80)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"session {sid}  RUN  succeeded" in out
    assert "task " in out and "succeeded" in out  # the history, then the final view
    assert (repo / "out.txt").read_text() == "watched\n"

    unknown = run_cli(procs, bus, "watch", "s-nosuchthing", timeout=30)
    assert unknown.returncode == 3 and "not_found" in unknown.stderr, unknown.stderr


@pytest.mark.timeout(90)
def test_exit_codes_tell_a_timeout_a_failure_and_a_hub_that_is_down_apart(procs, bus, tmp_path):
    start_services(procs, bus)
    start_agent(procs, bus, "agent-a")
    repo = tmp_path / "repo"
    repo.mkdir()
    slow = run_cli(procs, bus, "submit", "RUN", "sleep 30", "--repo", str(repo), "--wait",
                   "--wait-timeout", "1")
    assert slow.returncode == 4 and "it goes on" in slow.stderr, slow.stderr
    failed = run_cli(procs, bus, "submit", "RUN", "exit 7", "--repo", str(repo), "--wait",
                     "--wait-timeout", "60")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    bad = run_cli(procs, bus, "submit", "RUN", "true", "--repo", str(repo), "--priority",
                  "500")
    assert bad.returncode == 2, bad.stderr
    # no hub at all: nothing answers
    down = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--set",
         f'communication.router_endpoint="ipc://{tmp_path}/nobody.sock"', "--set",
         f'data_dir="{tmp_path}/d"', "--set", "communication.message_timeout=1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert down.returncode == 5 and "is it up?" in down.stderr, down.stderr
