"""Processes a stack left behind when its supervisord died (kill -9, OOM): the services,
the controller's agents and their task processes keep running without it. They are found
by the run directory every one of them inherited in its environment (CCAA_RUN_DIR, set by
`ccaa up`), never by name, so other stacks and other users' processes are never touched."""

from __future__ import annotations

import re

import psutil

from libs import proctrack

_MODULE = re.compile(r"^services\.(\w+)$")


#: marks a process started beside a stack for it (the demo's model server): `ccaa down`
#: stops it with the stack, while `ccaa up`, clearing what a dead supervisord left, does not
BESIDE_ENV = "CCAA_BESIDE_RUN_DIR"


def find(run_dir: str, beside: bool = False) -> list[psutil.Process]:
    """Live processes started by the stack whose run directory is ``run_dir`` (and, with
    ``beside``, those started beside it)."""
    found = proctrack.find_by_env("CCAA_RUN_DIR", run_dir)
    if beside:
        found += [p for p in proctrack.find_by_env(BESIDE_ENV, run_dir) if p not in found]
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


def stop(procs: list[psutil.Process], grace: float = proctrack.GRACE_SECONDS) -> list[str]:
    """SIGTERM each (agents report their work interrupted), SIGKILL what is left after
    ``grace``; returns their descriptions."""
    names = [describe(p) for p in procs]
    proctrack.stop(procs, grace)
    return names
