"""Small read-only git queries shared by services (the agent's worktree module does the
writing)."""

from __future__ import annotations

import subprocess


def head_commit(path: str) -> str:
    """The commit checked out in ``path``, or "" if it is not a git work tree with commits."""
    try:
        proc = subprocess.run(["git", "-C", path, "rev-parse", "--verify", "HEAD"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""
