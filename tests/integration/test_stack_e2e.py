"""`ccaa up` / `ccaa status` / `ccaa submit --wait` / `ccaa down` under supervisord,
leaving no process behind."""

from __future__ import annotations

import os
import subprocess
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

        status = ccaa("status", config=config)
        assert status.returncode == 0, status.stderr
        rows = status.stdout.splitlines()
        services = {r.split()[0] for r in rows if " service " in r}
        assert services == {"hub", "commands", "orchestrator", "distributor", "reporter",
                            "controller"}
        agents = [r for r in rows if " agent " in r]
        assert len(agents) == 2 and all(" worker " in r for r in agents)

        sub = ccaa("submit", "RUN", "printf 'made by ccaa' > out.txt", "--repo", str(repo), "--wait",
                   "--wait-timeout", "60", config=config)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert "succeeded" in sub.stdout.splitlines()[-2]
        for state in ("queued", "assigned", "running", "succeeded"):
            assert f" {state}" in sub.stdout
        assert (repo / "out.txt").read_text() == "made by ccaa"

        bad = ccaa("submit", "RUN", "true", "--repo", str(tmp_path / "missing"), config=config)
        assert bad.returncode == 1 and "is not a directory" in bad.stderr
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
