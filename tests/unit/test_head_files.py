"""HEAD read from the repository's files agrees with git, and a directory in no work tree
costs no git process."""

from __future__ import annotations

import subprocess

import pytest

from libs import worktree

pytestmark = pytest.mark.timeout(60)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_head_from_files_matches_git_loose_packed_detached_and_unborn(tmp_path, monkeypatch):
    repo = tmp_path / "r"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    assert worktree.head_commit(str(repo)) == ""  # unborn: git says so
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
        "-m", "one")
    sha = git(repo, "rev-parse", "HEAD")
    (repo / "sub").mkdir()
    calls = []
    real = worktree.git
    monkeypatch.setattr(worktree, "git", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert worktree.head_commit(str(repo)) == sha  # loose ref
    assert worktree.head_commit(str(repo / "sub")) == sha  # from a subdirectory
    git(repo, "pack-refs", "--all")
    assert worktree.head_commit(str(repo)) == sha  # packed ref
    git(repo, "checkout", "-q", "--detach")
    assert worktree.head_commit(str(repo)) == sha  # detached
    assert calls == []  # no git process for any of these
    plain = tmp_path / "plain"
    plain.mkdir()
    assert worktree.head_commit(str(plain)) == "" and not worktree.is_git_repo(str(plain))
    assert worktree.head_commit(str(tmp_path / "missing")) == ""
    assert calls == []
