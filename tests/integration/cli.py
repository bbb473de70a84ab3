"""Running the ccaa CLI as a real process against the test bus (the ``bus`` fixture); every
process started is registered with ``procs`` for cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import ROOT


def cli_flags(bus) -> list[str]:
    """The settings that point the CLI at the test bus (and match its heartbeat)."""
    return ["--set", f'communication.router_endpoint="{bus.router}"',
            "--set", f'communication.pub_endpoint="{bus.pub}"',
            "--set", f'communication.sub_endpoint="{bus.sub}"',
            "--set", f'data_dir="{bus.data_dir}"',
            "--set", f"communication.heartbeat_interval={bus.heartbeat}",
            "--set", f"communication.liveness={bus.liveness}"]


def start_cli(procs, bus, *args: str, **popen) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", *args,
                             *cli_flags(bus)], text=True, cwd=ROOT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), **popen)
    procs.extra_pids.add(proc.pid)
    return proc


def run_cli(procs, bus, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a CLI command to its end; its exit status, stdout and stderr."""
    proc = start_cli(procs, bus, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
