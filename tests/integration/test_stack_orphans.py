"""After kill -9 of supervisord its services and agents keep running; `ccaa down` stops
them and `ccaa up` clears them and starts afresh (found by run directory, never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import _alive
from tests.integration.test_stack_e2e import CONFIG, ccaa


def tree_of(pidfile) -> list[int]:
    sup = psutil.Process(int(pidfile.read_text()))
    return [sup.pid] + [c.pid for c in sup.children(recursive=True)]


def kill_supervisord(pidfile) -> list[int]:
    """SIGKILL supervisord only; return the processes it leaves behind."""
    tree = tree_of(pidfile)
    os.kill(tree[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(tree[0]):
        assert time.monotonic() < deadline
        time.sleep(0.02)  # wait-ok: polling the process table under a deadline
    left = [p for p in tree[1:] if _alive(p)]
    assert len(left) == 6 + 2, "services and agents outlive their supervisord"
    return left


@pytest.mark.timeout(240)
def test_down_and_up_recover_from_a_killed_supervisord(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    seen: set[int] = set()
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        left = kill_supervisord(pidfile)
        seen.update(left)

        down = ccaa("down", config=config)
        assert down.returncode == 0, down.stderr
        assert "supervisord was not running; stopped 8 process(es) left from it" in down.stdout
        for name in ("hub (pid", "orchestrator (pid", "agent agent-worker-"):
            assert name in down.stdout, down.stdout
        assert "ccaa is down" in down.stdout
        assert [p for p in left if _alive(p)] == []
        assert ccaa("down", config=config).stdout.strip() == "ccaa was not running"

        # the same after a second kill, recovered by `ccaa up` this time; a process started
        # beside the stack for it (as the demo starts its model server) is marked so: that
        # `ccaa up` leaves it be, and a plain `ccaa down` stops it with the rest
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        # a long-lived stand-in process (it is stopped by `ccaa down`, never waited on)
        beside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],  # wait-ok
                                  env=dict(os.environ, CCAA_BESIDE_RUN_DIR=str(pidfile.parent)),
                                  start_new_session=True)
        seen.add(beside.pid)
        left = kill_supervisord(pidfile)
        seen.update(left)
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "supervisord had died; stopped 8 process(es)" in up.stderr
        assert [p for p in left if _alive(p)] == []
        assert beside.poll() is None, "ccaa up stopped a process started beside the stack"
        status = ccaa("status", config=config)
        assert status.returncode == 0
        names = {line.split()[0] for line in status.stdout.splitlines()[1:]}
        assert {"hub", "orchestrator", f"controller@{socket.gethostname()}"} <= names, \
            status.stdout
        seen.update(tree_of(pidfile))

        down = ccaa("down", config=config)
        assert down.returncode == 0, down.stderr
        assert "and 1 more process(es) of this stack" in down.stdout, down.stdout
        assert beside.wait(10) is not None
    finally:
        down = ccaa("down", config=config)
        leftover = [p for p in seen if _alive(p)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    assert leftover == []
