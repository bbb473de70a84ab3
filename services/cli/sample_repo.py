"""The small sample repository `ccaa demo` works on: a Python package with tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

FILES = {
    "README.md": "# calc\n\nA tiny arithmetic package used by the ccaa demo.\n",
    "calc/__init__.py": '"""Tiny arithmetic."""\n\nfrom calc.core import add, subtract\n\n'
                        '__all__ = ["add", "subtract"]\n',
    "calc/core.py": 'def add(a: float, b: float) -> float:\n    return a + b\n\n\n'
                    'def subtract(a: float, b: float) -> float:\n    return a - b\n',
    "tests/__init__.py": "",
    "tests/test_core.py": "from calc.core import add, subtract\n\n\n"
                          "def test_add():\n    assert add(2, 3) == 5\n\n\n"
                          "def test_subtract():\n    assert subtract(5, 3) == 2\n",
    ".gitignore": "__pycache__/\n.pytest_cache/\n",
}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def create(repo: Path) -> str:
    """Create the repository with one commit; returns the commit sha."""
    repo.mkdir(parents=True, exist_ok=True)
    for rel, text in FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=ccaa demo", "-c", "user.email=demo@ccaa.local",
        "commit", "-q", "-m", "calc: add and subtract")
    return git(repo, "rev-parse", "HEAD").strip()
