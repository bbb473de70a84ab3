"""Fixtures that start real ccaa processes on ephemeral ports and always clean them up."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tools_or_skip(*names: str) -> None:
    """A system tool a test needs: CI installs it (.ci/run), so there its absence fails the
    test; elsewhere the test is skipped, saying what is missing."""
    import shutil

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs {', '.join(missing)} (.ci/run)")
        pytest.skip(f"not installed here: {', '.join(missing)}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


class Procs:
    """Starts processes in their own process groups; kills every group on teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.extra_pids: set[int] = set()

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                               full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=full_env,
                                cwd=cwd or ROOT, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def service(self, module: str, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        return self.start(name or module.rsplit(".", 1)[-1],
                          [sys.executable, "-m", module, *args])

    def ready(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> dict:
        """Wait for the process's JSON ready line; fail fast if it exits first."""
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no ready line within {timeout}s from {proc.args}\n"
                                     f"{self.logs()}")
            readable, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if readable:
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(f"{proc.args} exited with {proc.wait()}\n{self.logs()}")
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if data.get("event") == "ready":
                    return data
            elif proc.poll() is not None:
                raise AssertionError(f"{proc.args} exited with {proc.returncode}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        for _, proc in self.procs:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.kill(proc, signal.SIGKILL)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout:
                proc.stdout.close()
        for pid in self.extra_pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    p = Procs(log_dir)
    try:
        yield p
    finally:
        p.cleanup()


@dataclass
class Bus:
    router: str
    pub: str
    sub: str
    metrics: str
    data_dir: Path
    heartbeat: float
    liveness: int

    def args(self) -> list[str]:
        return ["--hub", self.router, "--pub", self.pub, "--sub", self.sub,
                "--metrics-port", "0",
                "--set", f'data_dir="{self.data_dir}"',
                "--set", f"communication.heartbeat_interval={self.heartbeat}",
                "--set", f"communication.liveness={self.liveness}",
                "--set", "orchestrator.reconcile_interval=0.5",
                "--set", "orchestrator.retry_backoff=0.1",
                "--set", "orchestrator.result_resend_interval=0.5",
                # shell commands as tasks; tests of Claude Code set executor="claude"
                "--set", 'agent_hierarchy.worker.executor="command"']

    def comm(self):
        from libs.config import CommunicationConfig

        return CommunicationConfig(router_endpoint=self.router, pub_endpoint=self.pub,
                                   sub_endpoint=self.sub, heartbeat_interval=self.heartbeat,
                                   liveness=self.liveness, message_timeout=5.0)


HEARTBEAT = 0.2
LIVENESS = 3


@pytest.fixture
def bus(procs: Procs, tmp_path: Path, request: pytest.FixtureRequest) -> Bus:
    """A hub on ephemeral ports. Tests that run real Claude Code processes (CPU-heavy on
    two cores) ask for a longer liveness budget with ``@pytest.mark.bus(heartbeat=...,
    liveness=...)``."""
    marker = request.node.get_closest_marker("bus")
    heartbeat = (marker.kwargs.get("heartbeat") if marker else None) or HEARTBEAT
    liveness = (marker.kwargs.get("liveness") if marker else None) or LIVENESS
    data = tmp_path / "data"
    data.mkdir()
    # the hub's own data directory: a bus token in the user's ~/.ccaa never applies here
    hub = procs.service("services.hub", "--hub", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                        "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0",
                        "--set", f'data_dir="{data}"',
                        "--set", f"communication.heartbeat_interval={heartbeat}",
                        "--set", f"communication.liveness={liveness}")
    ready = procs.ready(hub)
    return Bus(ready["router"], ready["pub"], ready["sub"], ready["metrics"], data,
               heartbeat, liveness)
