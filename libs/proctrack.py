"""Finding and stopping processes by a marker in their environment. Processes started by
ccaa carry markers that every descendant inherits (``CCAA_RUN_DIR`` for a stack,
``CCAA_AGENT_TOKEN`` for one agent process's tasks), so what a dead parent left behind is
found exactly, whatever became of the process tree and groups, and never by name."""

from __future__ import annotations

import os

import psutil

#: seconds between SIGTERM and SIGKILL in ``stop``
GRACE_SECONDS = 10.0


def find_by_env(name: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has ``name=value`` (this process and its
    ancestors excluded)."""
    if not value:
        return []
    mine = {os.getpid()}
    try:
        mine.update(p.pid for p in psutil.Process().parents())
    except psutil.Error:
        pass
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.pid in mine or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def stop(procs: list[psutil.Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each, SIGKILL what is left after ``grace`` (0: SIGKILL at once)."""
    if grace > 0:
        for proc in procs:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20
