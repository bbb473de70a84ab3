"""The peer comparison runs one system at a time: every other system's processes (and
what they started) are stopped for its turn and go on after; what a system starts is
found as the children it added."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.peers import pause, resume, started_by

pytestmark = pytest.mark.timeout(30)


def status_of(pids: list[int], want: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        got = {pid: psutil.Process(pid).status() for pid in pids}
        if all(s == want for s in got.values()):
            return
        assert time.monotonic() < deadline, f"not all {want}: {got}"
        time.sleep(0.02)  # wait-ok: the kernel changes a process's state asynchronously


def test_a_system_and_what_it_started_stop_for_another_turn_and_go_on_after():
    # a "system": a parent that starts a child of its own (as a Dask worker its nannies)
    # (its sleeps are the processes' lifetimes, killed at the end; nothing waits on them)
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"  # wait-ok: lifetimes
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _, pids = started_by(lambda: procs.append(
            subprocess.Popen([sys.executable, "-c", script], start_new_session=True)))
        assert pids == [procs[0].pid]
        root = psutil.Process(procs[0].pid)
        deadline = time.monotonic() + 10
        while not root.children():
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.02)  # wait-ok: until the system's own child is started
        tree = [root.pid, *(c.pid for c in root.children(recursive=True))]
        pause(pids)
        status_of(tree, psutil.STATUS_STOPPED)
        resume(pids)
        status_of(tree, psutil.STATUS_SLEEPING)
    finally:
        for proc in procs:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()

