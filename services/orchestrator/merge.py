"""Merging task branches on the session's repository (the orchestrator's host has it).

Merges happen in a worktree of the orchestrator's own under ``data_dir/merges``, on a
branch ``ccaa/<session>/<name>``; the user's checkout is never touched."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from libs import worktree

IDENTITY = ["-c", "user.name=ccaa", "-c", "user.email=ccaa@ccaa.local"]
DIFF_LIMIT = 20_000


class GitError(RuntimeError):
    pass


def git(cwd: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", "-C", str(cwd), *IDENTITY, *args], capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


@dataclass
class Conflict:
    branch: str
    commit: str
    files: list[str]
    output: str


@dataclass
class MergeResult:
    branch: str
    head: str
    merged: list[str] = field(default_factory=list)  # names merged by this call
    conflict: Conflict | None = None


def _worktree(repo: str, branch: str, start: str, root: Path) -> Path:
    path = root / branch.replace("/", "__")
    if (path / ".git").exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    exists = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    with worktree.locked(repo):  # agents add worktrees in the same repository meanwhile
        if exists.returncode == 0:
            git(repo, "worktree", "add", "--force", str(path), branch)
        else:
            git(repo, "worktree", "add", "--force", "-b", branch, str(path), start)
    return path


def merge_into(repo: str, branch: str, start: str, items: list[tuple[str, str]],
               root: Path) -> MergeResult:
    """Merge each ``(name, commit)`` into ``branch`` (created at ``start`` if new), in
    order, skipping those already merged; stop at the first conflict (aborted, reported)."""
    wt = _worktree(repo, branch, start, root)
    result = MergeResult(branch=branch, head="")
    for name, commit in items:
        already = git(wt, "merge-base", "--is-ancestor", commit, "HEAD", check=False)
        if already.returncode == 0:
            continue
        merge = git(wt, "merge", "--no-ff", "--no-edit", "-m", f"ccaa: merge {name}", commit,
                    check=False)
        if merge.returncode != 0:
            files = git(wt, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
            git(wt, "merge", "--abort", check=False)
            result.conflict = Conflict(name, commit, files,
                                       (merge.stdout + merge.stderr).strip()[-4000:])
            break
        result.merged.append(name)
    result.head = git(wt, "rev-parse", "HEAD").stdout.strip()
    return result


def diff(repo: str, base: str, commit: str, limit: int = DIFF_LIMIT) -> str:
    text = git(repo, "diff", "--stat", "--patch", f"{base}..{commit}", check=False).stdout
    if len(text) > limit:
        text = text[:limit] + f"\n... diff truncated at {limit} characters ...\n"
    return text


def delete_branches(repo: str, branches: list[str]) -> None:
    """Delete the branches that exist (one git call per few hundred)."""
    for i in range(0, len(branches), 200):
        git(repo, "branch", "-D", *branches[i:i + 200], check=False)
