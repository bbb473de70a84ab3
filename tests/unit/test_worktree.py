"""Git worktree isolation in a temporary repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs import worktree

pytestmark = pytest.mark.timeout(30)


def git(path: Path | str, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("hello\n")
    (path / "app.py").write_text("print('v1')\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return path


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "worktrees")


def test_create_makes_a_branch_at_the_base_commit(repo: Path, root: str):
    base = git(repo, "rev-parse", "HEAD")
    (repo / "later.txt").write_text("after the base\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "later")

    wt = worktree.create(str(repo), "sess-1", "task-a", base_commit=base, root=root)
    assert wt.branch == "ccaa/sess-1/task-a" and wt.created
    assert Path(wt.path) == (Path(root) / "sess-1" / "task-a").resolve()
    assert git(wt.path, "rev-parse", "HEAD") == base
    assert git(wt.path, "branch", "--show-current") == "ccaa/sess-1/task-a"
    assert not (Path(wt.path) / "later.txt").exists()
    assert worktree.is_git_repo(wt.path) and not worktree.is_git_repo(root + "/nope")


def test_default_base_is_head_and_ids_are_made_safe(repo: Path, root: str):
    wt = worktree.create(str(repo), "s 1..x", "t~1^:", root=root)
    assert wt.base == git(repo, "rev-parse", "HEAD")
    git(repo, "check-ref-format", f"refs/heads/{wt.branch}")  # a valid branch name
    assert wt.branch.startswith("ccaa/")


def test_the_default_root_is_beside_the_repository_not_inside_git(repo: Path):
    wt = worktree.create(str(repo), "s1", "t1")
    assert Path(wt.path).parent.parent == repo.parent / "repo.ccaa-worktrees"
    worktree.remove_session(str(repo), "s1")


def test_a_retry_reuses_the_worktree_and_its_changes(repo: Path, root: str):
    first = worktree.create(str(repo), "s1", "t1", root=root)
    (Path(first.path) / "work.txt").write_text("half done\n")
    again = worktree.create(str(repo), "s1", "t1", root=root, setup="touch setup-ran")
    assert again.path == first.path and again.branch == first.branch
    assert not again.created
    assert (Path(again.path) / "work.txt").read_text() == "half done\n"
    assert not (Path(again.path) / "setup-ran").exists()  # setup runs in new worktrees only


def test_commit_records_changes_with_the_agent_author(repo: Path, root: str):
    wt = worktree.create(str(repo), "s1", "t1", root=root)
    assert worktree.commit(wt, "nothing") is None  # no changes, no commit
    (Path(wt.path) / "app.py").write_text("print('v2')\n")
    (Path(wt.path) / "pkg").mkdir()
    (Path(wt.path) / "pkg" / "new.py").write_text("x = 1\n")
    assert worktree.files_changed(wt.path, wt.base) == ["app.py", "pkg/new.py"]
    stat = worktree.diff_stat(wt.path, wt.base)
    assert "app.py" in stat and "pkg/new.py" in stat  # untracked files included

    sha = worktree.commit(wt, "ccaa t1: change app")
    assert sha == git(wt.path, "rev-parse", "HEAD") and sha != wt.base
    assert git(repo, "rev-parse", "ccaa/s1/t1") == sha
    assert git(wt.path, "log", "-1", "--format=%an <%ae>|%s") == \
        "ccaa agent <agent@ccaa.local>|ccaa t1: change app"
    assert worktree.files_changed(wt.path, wt.base) == ["app.py", "pkg/new.py"]
    stat = worktree.diff_stat(wt.path, wt.base)
    assert "2 files changed" in stat and "untracked" not in stat
    # the base repository's working tree and branch are untouched
    assert (repo / "app.py").read_text() == "print('v1')\n"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--show-current") == "main"


def test_a_retry_after_removal_continues_on_the_branch(repo: Path, root: str):
    wt = worktree.create(str(repo), "s1", "t1", root=root)
    (Path(wt.path) / "a.txt").write_text("a\n")
    sha = worktree.commit(wt, "first attempt")
    worktree.remove_session(str(repo), "s1", root=root)
    again = worktree.create(str(repo), "s1", "t1", root=root)
    assert again.created and git(again.path, "rev-parse", "HEAD") == sha
    assert (Path(again.path) / "a.txt").read_text() == "a\n"


def test_remove_session_keeps_branches_and_other_sessions(repo: Path, root: str):
    a = worktree.create(str(repo), "s1", "t1", root=root)
    b = worktree.create(str(repo), "s1", "t2", root=root)
    other = worktree.create(str(repo), "s2", "t1", root=root)
    (Path(a.path) / "f.txt").write_text("f\n")
    worktree.commit(a, "work")

    removed = worktree.remove_session(str(repo), "s1", root=root)
    assert sorted(removed) == sorted([a.path, b.path])
    assert not os.path.exists(a.path) and not os.path.exists(b.path)
    assert os.path.isdir(other.path)
    listed = git(repo, "worktree", "list", "--porcelain")
    assert a.path not in listed and other.path in listed
    branches = git(repo, "branch", "--list", "ccaa/*", "--format=%(refname:short)").split()
    assert sorted(branches) == ["ccaa/s1/t1", "ccaa/s1/t2", "ccaa/s2/t1"]
    assert worktree.remove_session(str(repo), "s1", root=root) == []  # idempotent


def test_setup_command_runs_in_a_new_worktree(repo: Path, root: str):
    wt = worktree.create(str(repo), "s1", "t1", root=root,
                         setup="pwd > where.txt && git rev-parse --show-toplevel >> where.txt")
    lines = (Path(wt.path) / "where.txt").read_text().split()
    assert lines == [wt.path, wt.path]


def test_setup_failure_and_timeout_raise_clear_errors(repo: Path, root: str):
    with pytest.raises(RuntimeError, match=r"setup 'echo broken; exit 3'.*failed \(3\).*broken"):
        worktree.create(str(repo), "s1", "t1", root=root, setup="echo broken; exit 3")
    with pytest.raises(RuntimeError, match="took over 0.5s"):
        worktree.create(str(repo), "s1", "t2", root=root, setup="sleep 30", setup_timeout=0.5)


def test_git_errors_carry_gits_message(repo: Path, root: str, tmp_path: Path):
    with pytest.raises(RuntimeError, match="(?s)failed.*(not a git repository|cannot change)"):
        worktree.create(str(tmp_path / "missing"), "s1", "t1", root=root)
    with pytest.raises(RuntimeError, match="base commit 'bad-commit' is not a commit"):
        worktree.create(str(repo), "s1", "t1", base_commit="bad-commit", root=root)


PARALLEL = 12
ROUNDS = 4
CREATE = """
import sys
from libs import worktree
try:
    worktree.create(sys.argv[1], sys.argv[2], sys.argv[3], root=sys.argv[4])
except RuntimeError as exc:
    print(exc)
    sys.exit(1)
"""
REMOVE = """
import sys
from libs import worktree
worktree.remove_session(sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.timeout(120)
def test_worktrees_are_made_and_removed_safely_by_many_processes_at_once(repo: Path, root: str):
    """Agents on one host create worktrees in the same repository at the same moment while
    the orchestrator removes a finished session's: without the lock, 2 of 60 parallel
    creations failed here ("failed to read .git/worktrees/.../commondir")."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for n in range(ROUNDS):
        procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(repo), f"s{n}",
                                   f"t{i}", root], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for i in range(PARALLEL)]
        if n:
            procs.append(subprocess.Popen([sys.executable, "-c", REMOVE, str(repo), f"s{n - 1}",
                                           root], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        try:
            results = [(p.wait(60), p.stdout.read()) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.stdout.close()
        assert [r for r in results if r[0] != 0] == []
        listed = git(repo, "worktree", "list", "--porcelain")
        assert sum(f"ccaa/s{n}/t" in line for line in listed.splitlines()) == PARALLEL
        if n:
            assert f"ccaa/s{n - 1}/t" not in listed
