"""`ccaa agent` pointed at an address where no hub answers says so in plain words and
gives up after --connect-timeout (agents a controller starts keep trying)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(60)
def test_an_agent_that_cannot_reach_the_hub_says_so_and_gives_up(tmp_path):
    nothing = f"ipc://{tmp_path}/no-hub.sock"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "agent", "--hub", nothing,
         "--pub", f"ipc://{tmp_path}/p.sock", "--sub", f"ipc://{tmp_path}/s.sock",
         "--metrics-port", "0", "--connect-timeout", "2", "--log-level", "warning",
         "--set", "communication.heartbeat_interval=0.2", "--set", f'data_dir="{tmp_path}"',
         "--set", 'agent_hierarchy.worker.executor="command"'],
        capture_output=True, text=True, timeout=40, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    elapsed = time.monotonic() - started
    assert proc.returncode == 5, proc.stderr
    assert elapsed < 20
    readable = [line for line in proc.stderr.splitlines() if line.startswith("ccaa agent:")]
    assert readable[0].startswith(f"ccaa agent: no answer from the hub at {nothing} after ")
    assert "--retry-forever" in readable[0]
    assert readable[-1] == (f"ccaa agent: gave up: no hub answered at {nothing} within 2s "
                            "(is it up? check the address, or the CurveZMQ keys)")
    assert "Traceback" not in proc.stderr


def test_the_help_explains_the_deadline():
    out = subprocess.run([sys.executable, "-m", "services.agent", "--help"], capture_output=True,
                         text=True, timeout=30, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "--connect-timeout SECONDS" in out and "--retry-forever" in out
