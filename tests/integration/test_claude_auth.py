"""Missing Claude Code credentials are found before anything starts, and said plainly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CONFIG = """
data_dir = "{data}"
[communication]
router_endpoint = "ipc://{tmp}/hub.sock"
pub_endpoint = "ipc://{tmp}/pub.sock"
sub_endpoint = "ipc://{tmp}/sub.sock"
[agent_hierarchy.worker]
count = 1
executor = "claude"
[agent_hierarchy.architect]
count = 0
[agent_hierarchy.manager]
count = 0
"""


@pytest.mark.timeout(60)
def test_up_refuses_when_claude_code_cannot_authenticate_and_says_what_to_do(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CCAA_", "CLAUDE"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    up = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--config",
                         str(config)], capture_output=True, text=True, timeout=60, env=env)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "the roles worker run Claude Code, which cannot authenticate" in up.stderr
    assert "ANTHROPIC_API_KEY" in up.stderr and "ccaa claude login" in up.stderr
    assert not (tmp_path / "data" / "run" / "supervisord.pid").exists()  # nothing started
    assert "Traceback" not in up.stderr

    # `ccaa claude status` asks the same CLI the agents run
    status = subprocess.run([sys.executable, "-m", "services.cli.main", "claude", "status"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 1 and "Not logged in" in status.stdout + status.stderr


@pytest.mark.timeout(120)
def test_submit_refuses_when_no_agent_can_authenticate_and_status_says_which(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CCAA_", "CLAUDE"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))

    def ccaa(*args):
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args, "--config",
                               str(config)], capture_output=True, text=True, timeout=90,
                              env=env, cwd=tmp_path)

    try:
        up = ccaa("up", "--skip-auth-check")
        assert up.returncode == 0, up.stdout + up.stderr
        status = ccaa("status")
        worker = next(line for line in status.stdout.splitlines() if "agent-worker-" in line)
        assert "Claude Code cannot authenticate" in worker, status.stdout

        submit = ccaa("submit", "add a README", "--repo", str(tmp_path))
        assert submit.returncode == 3, submit.stdout + submit.stderr
        assert "no Claude Code agent that would run this can authenticate" in submit.stderr
        assert "ANTHROPIC_API_KEY" in submit.stderr and "--skip-auth-check" in submit.stderr
        sessions = ccaa("sessions", "--json")
        assert json.loads(sessions.stdout)["sessions"] == []  # nothing was submitted
        assert "Traceback" not in submit.stderr
    finally:
        ccaa("down")
