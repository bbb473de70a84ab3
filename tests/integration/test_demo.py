"""`ccaa demo` (the README's main job) on this machine: real Claude Code processes against
the scripted model server plan, implement, gate, review and merge; nothing is left running."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from tests.conftest import ROOT, _alive


@pytest.mark.timeout(300)
def test_demo_ends_with_a_merged_branch_made_by_claude_code(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--dir",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=280,
                          env=env, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
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
