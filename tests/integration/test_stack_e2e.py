"""`ccaa up` / `ccaa status` / `ccaa submit --wait` / `ccaa down` under supervisord,
leaving no process behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, _alive

CONFIG = """
data_dir = "{data}"
[communication]
router_endpoint = "ipc://{tmp}/hub.sock"
pub_endpoint = "ipc://{tmp}/pub.sock"
sub_endpoint = "ipc://{tmp}/sub.sock"
heartbeat_interval = 0.3
[metrics.ports]
hub = 0
commands = 0
orchestrator = 0
distributor = 0
controller = 0
[reporting]
http_port = 0
[agent_hierarchy.worker]
count = 2
executor = "command"
[agent_hierarchy.architect]
count = 0
[agent_hierarchy.manager]
count = 0
[agent_hierarchy.utility]
count = 0
"""


def ccaa(*args: str, config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args,
                           "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.timeout(180)
def test_up_status_submit_down_leaves_nothing_behind(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    tree: list[int] = []
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ccaa is up" in up.stdout
        supervisord = psutil.Process(int(pidfile.read_text()))
        tree = [supervisord.pid] + [c.pid for c in supervisord.children(recursive=True)]
        # supervisord's six services plus the controller's two agents
        assert len(tree) == 1 + 6 + 2, [psutil.Process(p).cmdline() for p in tree]

        # `ccaa up` made the bus token (private); every service and agent registered with
        # it, and a local process without it is refused
        token = tmp_path / "data" / "bus.token"
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        stranger = ccaa("status", "--set", 'communication.token="guess"', config=config)
        assert stranger.returncode == 3 and "bus token" in stranger.stderr, stranger.stderr

        status = ccaa("status", config=config)
        assert status.returncode == 0, status.stderr
        rows = status.stdout.splitlines()
        services = {r.split()[0] for r in rows if " service " in r}
        host = socket.gethostname()
        assert services == {"hub", "commands", "orchestrator", "distributor", "reporter",
                            f"controller@{host}"}
        agents = [r for r in rows if " agent " in r]
        assert len(agents) == 2 and all(" worker " in r for r in agents)
        # agents are listed under their host, with the host's cores, load and memory
        at = rows.index(next(r for r in rows if r.startswith(f"host {host}: ")))
        assert " cores, load " in rows[at] and " GiB free" in rows[at]
        assert all(r.startswith("  ") for r in rows[at + 1:at + 4]), rows

        sub = ccaa("submit", "RUN", "printf 'made by ccaa' > out.txt", "--repo", str(repo), "--wait",
                   "--wait-timeout", "60", "-v", config=config)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        sid = sub.stdout.split()[1]
        assert f"session {sid}  RUN  succeeded" in sub.stdout
        for state in ("queued", "assigned", "running", "succeeded"):
            assert f" {state}" in sub.stdout
        assert (repo / "out.txt").read_text() == "made by ccaa"

        # a long task, cancelled: the session says so and the command's process is gone
        slow = ccaa("submit", "RUN", "sleep 300", "--repo", str(repo), config=config)
        assert slow.returncode == 0, slow.stderr
        slow_id = slow.stdout.split()[1]
        deadline = time.monotonic() + 30
        while "running" not in ccaa("show", slow_id, config=config).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)  # wait-ok: polling the CLI under a deadline
        sleepers = [p for p in psutil.process_iter(["cmdline"])
                    if p.info["cmdline"] in (["bash", "-c", "sleep 300"], ["sleep", "300"])
                    and any(a.pid in tree for a in p.parents())]
        assert len(sleepers) == 1
        cancel = ccaa("cancel", slow_id, config=config)
        assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout
        deadline = time.monotonic() + 15
        while any(_alive(p.pid) for p in sleepers):
            assert time.monotonic() < deadline, "the cancelled command is still running"
            time.sleep(0.05)  # wait-ok: polling the process table under a deadline

        listing = ccaa("sessions", config=config)
        assert sid in listing.stdout and slow_id in listing.stdout
        shown = ccaa("show", sid, "--json", config=config)
        task_id = json.loads(shown.stdout)["tasks"][0]["task_id"]
        logs = ccaa("logs", task_id, config=config)
        assert logs.returncode == 0 and "attempt 1" in logs.stdout and "exit code 0" in logs.stdout

        bad = ccaa("submit", "RUN", "true", "--repo", str(tmp_path / "missing"), config=config)
        assert bad.returncode == 3 and "is not a directory" in bad.stderr
        bad = ccaa("submit", "RUN", "true", "--budget", "-1", config=config)
        assert bad.returncode == 2 and "budget_usd: Input should be greater than 0" in bad.stderr
        assert "Traceback" not in bad.stderr
        bad = ccaa("submit", "RUN", "true", "--role", "nobody", "--repo", str(repo),
                   config=config)
        assert bad.returncode == 3 and "unknown role 'nobody'" in bad.stderr
        # everything still alive after the bad request
        tree = [supervisord.pid] + [c.pid for c in supervisord.children(recursive=True)]
    finally:
        down = ccaa("down", config=config)
        assert down.returncode == 0, down.stderr
        leftover = [p for p in tree if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert "ccaa is down" in down.stdout
    assert leftover == []


@pytest.mark.timeout(180)
def test_a_curve_stack_runs_with_one_key_per_service(tmp_path):
    """`ccaa keys init` then `ccaa up` with CurveZMQ: every service registers with its own
    key, the agents with the agents' key, the CLI with the client key, and work runs."""
    config = tmp_path / "ccaa.toml"
    keys = tmp_path / "keys"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path).replace(
        "[communication]\n", f'[communication]\ncurve = true\nkeys_dir = "{keys}"\n'))
    repo = tmp_path / "repo"
    repo.mkdir()
    made = ccaa("keys", "init", config=config)
    assert made.returncode == 0, made.stderr
    listed = ccaa("keys", "list", config=config).stdout
    assert "orchestrator         service orchestrator" in listed
    assert "agents               an agent (any role)" in listed
    assert oct((keys / "orchestrator.key_secret").stat().st_mode & 0o777) == "0o600"
    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    tree: list[int] = []
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        supervisord = psutil.Process(int(pidfile.read_text()))
        tree = [supervisord.pid] + [c.pid for c in supervisord.children(recursive=True)]
        sub = ccaa("submit", "RUN", "printf curve > out.txt", "--repo", str(repo), "--wait",
                   "--wait-timeout", "60", config=config)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert (repo / "out.txt").read_text() == "curve"
        # a service's key is for that service only: the CLI cannot use it
        posing = ccaa("status", "--set", 'communication.client_key="orchestrator"',
                      config=config)
        assert posing.returncode == 3, posing.stdout
        assert "may register only as service orchestrator" in posing.stderr, posing.stderr
    finally:
        down = ccaa("down", config=config)
        leftover = [p for p in tree if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert down.returncode == 0, down.stderr
    assert leftover == []
