"""`ccaa demo` (the README's main job) on this machine: real Claude Code processes against
the scripted model server plan, implement, gate, review and merge; nothing is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import psutil
import pytest

from tests.conftest import ROOT, _alive


@pytest.mark.timeout(300)
def test_demo_ends_with_a_merged_branch_made_by_claude_code(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ANTHROPIC_API_KEY", None)
    demo_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--dir",
                           str(demo_dir)], capture_output=True, text=True, timeout=280,
                          env=env, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    assert "services stopped" in out and "still running" not in out
    assert "IMPLEMENT_FEATURE  succeeded" in out
    assert "ANALYZE_PROJECT  succeeded" in out and "calc is a tiny arithmetic package" in out
    for key in ("multiply", "divide", "exports"):
        assert f"work       {key}" in out
    # the workers' progress came from real claude processes
    assert "tool_use: Write: calc/multiply.py" in out and "claude session" in out

    repo = tmp_path / "demo" / "calc"
    branch = next(line.split()[-1] for line in out.splitlines()
                  if line.startswith("the merged result, branch "))
    branch = branch.rstrip(":")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True).stdout

    files = git("ls-tree", "-r", "--name-only", branch).split()
    assert {"calc/multiply.py", "calc/divide.py", "tests/test_multiply.py",
            "tests/test_divide.py"} <= set(files)
    assert "from calc.divide import divide" in git("show", f"{branch}:calc/__init__.py")
    authors = set(git("log", "--format=%an", branch).split("\n"))
    assert "ccaa agent" in authors  # commits made in the agents' worktrees
    # the merged code really works
    # the session's worktrees are gone; its work branches and the result branch stay
    assert len(git("worktree", "list", "--porcelain").split("worktree ")) == 2
    branches = git("branch", "--list", "ccaa/*", "--format=%(refname:short)").split()
    assert branch in branches and len(branches) == 4  # result + three work branches
    git("worktree", "add", str(tmp_path / "wt"), branch)
    check = subprocess.run([sys.executable, "-c", "import calc; print(calc.multiply(6, 7), "
                            "calc.divide(1, 4))"], cwd=tmp_path / "wt", capture_output=True,
                           text=True, check=True)
    assert check.stdout.split() == ["42", "0.25"]

    leftover = [p.pid for p in psutil.Process().children(recursive=True)
                if p.pid not in before and _alive(p.pid)]
    assert leftover == []
    claude = [p for p in psutil.process_iter(["cmdline"])
              if any("_bundled/claude" in a for a in (p.info["cmdline"] or []))
              and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert claude == []


@pytest.mark.timeout(300)
def test_demo_keep_leaves_a_stack_its_printed_commands_reach_and_stop(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("CCAA_CONFIG", None)

    def ccaa(*args, timeout=280):
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=tmp_path)

    config = tmp_path / "demo" / "ccaa.toml"
    try:
        proc = ccaa("demo", "--dir", str(tmp_path / "demo"), "--keep", "--workers", "1")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "services stopped" not in out
        assert f"ccaa status --config {config}" in out
        assert f"ccaa down --config {config}" in out
        dashboard = next(line.split()[-1] for line in out.splitlines()
                         if line.strip().startswith("dashboard: "))
        assert dashboard.startswith("http://")

        # the printed commands reach the stack it left, its dashboard and its model server
        status = ccaa("status", "--config", str(config), timeout=30)
        assert status.returncode == 0 and "agent-worker-" in status.stdout, status.stdout
        sessions = ccaa("sessions", "--config", str(config), "--json", timeout=30)
        assert sessions.returncode == 0, sessions.stderr
        assert sorted(s["state"] for s in json.loads(sessions.stdout)["sessions"]) == \
            ["succeeded", "succeeded"]
        with urllib.request.urlopen(dashboard, timeout=10) as page:
            assert page.status == 200
        server = [p for p in psutil.process_iter(["cmdline"])
                  if "services.model_server" in " ".join(p.info["cmdline"] or [])
                  and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
        assert len(server) == 1, "the model server goes on with the stack"
    finally:
        down = ccaa("down", "--config", str(config), timeout=120)
    assert down.returncode == 0, down.stderr
    assert "1 more process(es) of this stack" in down.stdout, down.stdout
    assert "model_server" in down.stdout, down.stdout
    leftover = [p.pid for p in psutil.process_iter(["cmdline"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or []) and _alive(p.pid)
                and p.pid not in before]
    assert leftover == []
