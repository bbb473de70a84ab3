"""Processes a stack left behind when its supervisord died (kill -9, OOM): the services,
the controller's agents and their task processes keep running without it. They are found
by the run directory every one of them inherited in its environment (CCAA_RUN_DIR, set by
`ccaa up`), never by name, so other stacks and other users' processes are never touched."""

from __future__ import annotations

import os
import re

import psutil

#: seconds between SIGTERM and SIGKILL
GRACE_SECONDS = 10.0

_MODULE = re.compile(r"^services\.(\w+)$")


def find(run_dir: str) -> list[psutil.Process]:
    """Live processes started by the stack whose run directory is ``run_dir`` (this
    process and its ancestors excluded)."""
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
            if proc.environ().get("CCAA_RUN_DIR") == run_dir:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def describe(proc: psutil.Process) -> str:
    """``hub (pid 123)``, ``agent agent-worker-h-1 (pid 456)``, ``bash (pid 789)``."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return f"pid {proc.pid}"
    name = proc.name()
    if "-m" in argv and argv.index("-m") + 1 < len(argv):
        m = _MODULE.match(argv[argv.index("-m") + 1])
        if m:
            name = m.group(1)
            if name == "agent" and "--name" in argv and argv.index("--name") + 1 < len(argv):
                name = f"agent {argv[argv.index('--name') + 1]}"
    return f"{name} (pid {proc.pid})"


def stop(procs: list[psutil.Process], grace: float = GRACE_SECONDS) -> list[str]:
    """SIGTERM each (agents report their work interrupted), SIGKILL what is left after
    ``grace``; returns their descriptions."""
    names = [describe(p) for p in procs]
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return names
