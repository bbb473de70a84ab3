"""A planned session across two hosts, with real Claude Code agents against the scripted
model server: the hub's host plans (the architect), a node whose processes cannot see the
user's repository (a tmpfs over it, in a mount namespace of their own) does the work, the
gates and the reviews on code that came over the bus, and the hub's host merges.

The node runs under `unshare --mount` as root; elsewhere it falls back to
``code_transfer.mode = "always"`` (the same path, without the hiding)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import sample_repo
from services.model_server.server import ModelServer
from tests.integration.test_code_transfer import git
from tests.integration.test_node import HUB_HOST, free_ports, share_token, stop_all, tree_of
from tests.integration.test_stack_e2e import ROOT, ccaa

SCRIPT = Path(__file__).resolve().parents[1] / "model_scripts" / "feature_gate.yaml"

CENTRAL = HUB_HOST + """heartbeat_interval = 0.5
[orchestrator]
retry_attempts = 1
[code_transfer]
mode = "{mode}"
chunk_kb = 16  # many chunks even for a small repository
[agent_hierarchy.architect]
count = 1
executor = "claude"
max_turns = 20
[agent_hierarchy.manager]
count = 0
executor = "claude"
max_turns = 20
[agent_hierarchy.worker]
count = 0
executor = "claude"
max_turns = 30
allowed_tools = ["Read", "Write", "Edit"]
[agent_hierarchy.utility]
count = 0
executor = "command"
"""

NODE = """
data_dir = "{data}"
[metrics]
host = "127.0.0.1"
[metrics.ports]
controller = 0
[agent_hierarchy.architect]
count = 0  # the hub's host plans
[agent_hierarchy.worker]
count = 2
[agent_hierarchy.manager]
count = 1
[agent_hierarchy.utility]
count = 1
"""


def can_hide_paths() -> bool:
    """Whether this test may give the node a mount namespace with the repository hidden."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True).returncode == 0


def start_node(config: Path, hub: int, hide: Path | None, env: dict[str, str]):
    """`ccaa node` for host node-b; with ``hide``, in a mount namespace where a tmpfs covers
    that directory (supervisord and everything it starts stay in that namespace)."""
    cmd = [sys.executable, "-m", "services.cli.main", "node", "--hub", f"tcp://127.0.0.1:{hub}",
           "--host-name", "node-b", "--config", str(config)]
    if hide is not None:
        script = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
               str(hide), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


@pytest.mark.timeout(300)
def test_a_planned_session_runs_its_work_gates_and_reviews_on_a_node_without_the_repo(tmp_path):
    hide = can_hide_paths()
    if not hide and os.environ.get("CI"):
        pytest.fail("CI runs as root with unshare(1): the node must not see the repository")
    hub, pub, sub = free_ports(3)
    central = tmp_path / "central.toml"
    # "auto": the node takes the code over the bus only because it cannot see the repository
    central.write_text(CENTRAL.format(data=tmp_path / "central", hub=hub, pub=pub, sub=sub,
                                      mode="auto" if hide else "always"))
    node = tmp_path / "node.toml"
    node.write_text(NODE.format(data=tmp_path / "node"))
    repo = tmp_path / "calc"
    base = sample_repo.create(repo)
    central_pids: list[int] = []
    node_pids: list[int] = []
    with ModelServer([SCRIPT]) as model:
        env = {"CCAA_MODEL_BASE_URL": model.url}
        os.environ["CCAA_MODEL_BASE_URL"] = model.url  # the central stack's architect
        try:
            up = ccaa("up", config=central)
            assert up.returncode == 0, up.stdout + up.stderr
            central_pids = tree_of(tmp_path / "central" / "run" / "supervisord.pid")
            share_token(tmp_path)
            started = start_node(node, hub, repo if hide else None, env)
            assert started.returncode == 0, started.stdout + started.stderr
            node_pids = tree_of(tmp_path / "node" / "run" / "supervisord.pid")
            if hide:  # the node's processes really do not see it
                ns = [p for p in node_pids if os.readlink(f"/proc/{p}/ns/mnt")
                      != os.readlink("/proc/self/ns/mnt")]
                assert sorted(ns) == sorted(node_pids)
                for pid in node_pids:
                    assert not os.path.exists(f"/proc/{pid}/root{repo}/.git")

            run = ccaa("submit", "IMPLEMENT_FEATURE", "Add multiply and divide", "--repo",
                       str(repo), "--wait", "--wait-timeout", "200", config=central,
                       timeout=240)
            sid = run.stdout.split()[1]
            show = json.loads(ccaa("show", sid, "--json", config=central).stdout)
            assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-2000:])
        finally:
            os.environ.pop("CCAA_MODEL_BASE_URL", None)
            stop_all((node, node_pids), (central, central_pids))

    tasks = show["tasks"]
    by_kind: dict[str, list[dict]] = {}
    for t in tasks:
        by_kind.setdefault(t["kind"], []).append(t)
    # planned on the hub's host, worked, gated and reviewed on the node
    [plan] = by_kind["plan"]
    assert plan["agent_id"].startswith("agent-architect-") and "node-b" not in plan["agent_id"]
    assert plan["result"]["data"].get("code") == "in place"
    work = {t["key"]: t for t in by_kind["work"]}
    assert set(work) == {"multiply", "divide", "exports"}
    assert {"work", "gate", "review", "final_gate"} <= set(by_kind), set(by_kind)
    for kind in ("work", "gate", "review", "final_gate"):
        for t in by_kind[kind]:
            assert "-node-b-" in t["agent_id"], (kind, t["key"], t["agent_id"])
            assert t["result"]["data"].get("code") == "transferred", (kind, t["key"])
    # divide failed its gate on the node, went back, and its fix resumed the Claude session
    divide = work["divide"]
    assert divide["attempt"] == 2
    assert divide["result"]["data"]["session_id"] == divide["meta"]["resume_session"]
    # every task's branch came back into the user's repository, and the result has them all
    branch = show["session"]["report"]["branch"]
    for key, t in work.items():
        own = f"ccaa/{sid}/{t['task_id']}"
        assert git(repo, "merge-base", "--is-ancestor", own, branch) == "", key
        assert git(repo, "rev-parse", own) == t["result"]["data"]["commit"], key
    assert "raise ZeroDivisionError" in git(repo, "show", f"{branch}:calc/divide.py")
    assert "from calc.divide import divide" in git(repo, "show", f"{branch}:calc/__init__.py")
    assert "def multiply" in git(repo, "show", f"{branch}:calc/multiply.py")
    assert git(repo, "merge-base", "--is-ancestor", base, branch) == ""
    # the node's cache holds the repository; the user's repository was never written by it
    assert any((tmp_path / "node" / "repos").iterdir())
    assert git(repo, "status", "--porcelain") == ""
