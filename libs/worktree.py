"""Git worktree isolation for agent tasks.

Each isolated task runs in a worktree of its own on branch ``ccaa/<session>/<task>``,
made from the session's base commit, at ``<root>/<session>/<task>``. A retry of the
same task finds the worktree (or at least the branch) and continues on it. After the
run, everything the agent changed is committed on that branch with a fixed author, so
the orchestrator can review and merge it; the base repository's own working tree is
never touched.

The root must not lie inside ``.git``: Claude Code refuses to edit files there
("sensitive file"). The default is a sibling of the repository,
``<repo>.ccaa-worktrees``; the agent factory passes ``<data_dir>/worktrees``.

Every function here blocks (it runs git); call it through ``asyncio.to_thread`` from
async code. Git failures raise ``RuntimeError`` carrying git's stderr.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

AUTHOR_NAME = "ccaa agent"
AUTHOR_EMAIL = "agent@ccaa.local"
#: seconds one git command may take
GIT_TIMEOUT = 120.0
#: default seconds the worktree setup command may take
SETUP_TIMEOUT = 600.0

_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Worktree:
    path: str
    branch: str
    repo: str = ""
    base: str = ""  # the commit the branch was made from (or the base asked for)
    created: bool = True  # False: an existing worktree was reused


def git(path: str | os.PathLike[str], *args: str, check: bool = True,
        timeout: float = GIT_TIMEOUT, input: str | None = None) -> str:
    """Run ``git -C path args...`` (``input`` on its stdin); return stdout (stripped of
    the final newline)."""
    argv = ["git", "-C", str(path), *args]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env, **stdin)
    except FileNotFoundError:
        raise RuntimeError("git is not installed (no 'git' on PATH)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"git {' '.join(args)} in {path} took over {timeout:g}s") from None
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {path} failed "
                           f"({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.rstrip("\n")


def dot_git(path: str) -> str | None:
    """The nearest ``.git`` (a directory, or a linked worktree's file) at or above ``path``;
    None when there is none, so ``path`` is in no work tree; "" when git's environment
    (``GIT_DIR``) decides, so only git can tell. Spares a git process on the hot path."""
    if os.environ.get("GIT_DIR"):
        return ""
    p = os.path.abspath(path)
    while True:
        candidate = os.path.join(p, ".git")
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def _read_head(dot: str) -> str | None:
    """HEAD's sha read from the files of a plain ``.git`` directory (loose or packed ref);
    None when that is not enough to tell (a linked worktree, an unborn branch, reftable):
    ask git then."""
    if not os.path.isdir(dot):
        return None
    try:
        with open(os.path.join(dot, "HEAD")) as f:
            head_ref = f.read().strip()
        if _SHA.fullmatch(head_ref):
            return head_ref
        if not head_ref.startswith("ref: "):
            return None
        ref = head_ref[5:].strip()
        loose = os.path.join(dot, ref)
        if os.path.isfile(loose):
            with open(loose) as f:
                sha = f.read().strip()
            return sha if _SHA.fullmatch(sha) else None
        with open(os.path.join(dot, "packed-refs")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _SHA.fullmatch(parts[0]):
                    return parts[0]
    except OSError:
        return None
    return None


def is_git_repo(path: str) -> bool:
    """True if ``path`` is inside a git work tree."""
    if not path or not os.path.isdir(path) or dot_git(path) is None:
        return False
    try:
        return git(path, "rev-parse", "--is-inside-work-tree", check=False) == "true"
    except RuntimeError:
        return False


def repo_root(path: str) -> str:
    return git(path, "rev-parse", "--show-toplevel")


def head(path: str) -> str:
    """HEAD's sha, or "" if there is no commit yet."""
    return git(path, "rev-parse", "--verify", "--quiet", "HEAD", check=False)


def head_commit(path: str) -> str:
    """Like ``head``, but "" also when ``path`` is no git work tree or git is missing. Read
    from the repository's files where they tell (no git process), else from git."""
    if not path or not os.path.isdir(path):
        return ""
    dot = dot_git(path)
    if dot is None:
        return ""
    sha = _read_head(dot) if dot else None
    if sha is not None:
        return sha
    try:
        return head(path)
    except RuntimeError:
        return ""


def _safe(part: str) -> str:
    cleaned = _UNSAFE.sub("-", part).strip(".-")
    return cleaned.replace("..", ".") or "x"


def branch_name(session_id: str, task_id: str) -> str:
    return f"ccaa/{_safe(session_id)}/{_safe(task_id)}"


def default_root(repo: str) -> str:
    top = Path(repo_root(repo))
    return str(top.parent / f"{top.name}.ccaa-worktrees")


def worktree_path(root: str, session_id: str, task_id: str) -> str:
    return str(Path(root).expanduser().resolve() / _safe(session_id) / _safe(task_id))


def _registered(repo: str) -> dict[str, str]:
    """Worktrees git knows about: resolved path -> branch ("" if detached)."""
    out: dict[str, str] = {}
    path = ""
    for line in git(repo, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = str(Path(line[len("worktree "):]).resolve())
            out[path] = ""
        elif line.startswith("branch ") and path:
            out[path] = line[len("branch "):].removeprefix("refs/heads/")
    return out


def remove_worktrees_of(repo: str, branch: str) -> list[str]:
    """Remove the worktrees that have ``branch`` checked out (their changes go); return
    their paths."""
    with locked(repo):
        gone = [path for path, b in _registered(repo).items() if b == branch]
        for path in gone:
            git(repo, "worktree", "remove", "--force", path, check=False)
            shutil.rmtree(path, ignore_errors=True)
        if gone:
            git(repo, "worktree", "prune", check=False)
    return gone


def add_detached(repo: str, path: str, commit: str) -> str:
    """A throwaway worktree of ``commit`` (no branch) at ``path``, e.g. to run a gate on
    the base commit beside the branch; remove it with ``remove_detached``."""
    with locked(repo):
        shutil.rmtree(path, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)
        git(repo, "worktree", "add", "--force", "--detach", path, commit)
    return path


def remove_detached(repo: str, path: str) -> None:
    with locked(repo):
        git(repo, "worktree", "remove", "--force", path, check=False)
        shutil.rmtree(path, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def remove_branch(repo: str, branch: str) -> None:
    """``branch`` leaves ``repo``: the worktrees that have it checked out, then the branch."""
    remove_worktrees_of(repo, branch)
    git(repo, "branch", "-D", branch, check=False)


@contextmanager
def locked(repo: str) -> Iterator[None]:
    """Hold the repository's worktree lock: git's ``worktree add`` writes
    ``.git/worktrees/<name>/`` in steps, and a concurrent ``worktree add``, ``list`` or
    ``prune`` from another process reads it half-made and fails ("failed to read
    .../commondir"). Every worktree change by agents and the orchestrator on one host
    takes this lock (an flock on a file in the common git dir), so any number of them
    can run at once."""
    common = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    with open(common / "ccaa-worktrees.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _branch_exists(repo: str, branch: str) -> bool:
    return bool(git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                    check=False))


def create(repo: str, session_id: str, task_id: str, base_commit: str = "",
           root: str | None = None, setup: str = "",
           setup_timeout: float = SETUP_TIMEOUT) -> Worktree:
    """The worktree of this task, made (from ``base_commit``, default HEAD) or reused.

    ``setup`` is a shell command run in a newly made worktree (not a reused one)
    before the task; a failure or timeout raises RuntimeError (the worktree stays).
    """
    top = repo_root(repo)
    with locked(top):
        wt = _create(top, session_id, task_id, base_commit, root)
    if setup and wt.created:
        run_setup(wt.path, setup, setup_timeout)
    return wt


def _create(top: str, session_id: str, task_id: str, base_commit: str,
            root: str | None) -> Worktree:
    branch = branch_name(session_id, task_id)
    path = worktree_path(root or default_root(top), session_id, task_id)
    known = _registered(top)
    if path in known and os.path.isdir(path):
        if known[path] != branch:
            raise RuntimeError(f"worktree {path} exists but is on branch "
                               f"{known[path] or '(detached)'}, not {branch}")
        return Worktree(path, branch, top, base_commit or head(path), created=False)
    if path in known:  # registered but its directory is gone
        git(top, "worktree", "prune")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if _branch_exists(top, branch):  # an earlier attempt's branch: continue on it
        git(top, "worktree", "add", path, branch)
        base = base_commit or head(path)
    else:
        base = base_commit or head(top)
        if not base:
            raise RuntimeError(f"repository {top} has no commit to branch {branch} from")
        if not git(top, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", check=False):
            raise RuntimeError(f"base commit {base!r} is not a commit in {top}")
        git(top, "worktree", "add", "-b", branch, path, base)
    return Worktree(path, branch, top, base, created=True)


def run_setup(path: str, command: str, timeout: float = SETUP_TIMEOUT) -> str:
    """Run a shell command in ``path`` in a process group of its own (killed whole on
    timeout); return its output, raise RuntimeError if it fails."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        output, _ = proc.communicate()
        raise RuntimeError(f"worktree setup {command!r} in {path} took over {timeout:g}s: "
                           f"{output[-2000:]}") from None
    finally:
        _killpg(proc.pid)  # whatever it left running in its group
    if proc.returncode != 0:
        raise RuntimeError(f"worktree setup {command!r} in {path} failed "
                           f"({proc.returncode}): {output[-2000:]}")
    return output


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def has_changes(path: str) -> bool:
    return bool(git(path, "status", "--porcelain", "--untracked-files=all"))


def commit(worktree: Worktree | str, message: str) -> str | None:
    """Commit everything changed in the worktree (``git add -A``) as the ccaa agent.

    Returns the new commit's sha, or None when there was nothing to commit.
    """
    path = worktree.path if isinstance(worktree, Worktree) else worktree
    if not has_changes(path):
        return None
    git(path, "add", "-A")
    git(path, "-c", f"user.name={AUTHOR_NAME}", "-c", f"user.email={AUTHOR_EMAIL}",
        "-c", "commit.gpgsign=false", "commit", "--no-verify", "--quiet",
        f"--author={AUTHOR_NAME} <{AUTHOR_EMAIL}>", "-m", message or "ccaa agent changes")
    return head(path)


def _untracked(path: str) -> list[str]:
    out = git(path, "ls-files", "--others", "--exclude-standard", "-z")
    return [f for f in out.split("\0") if f]


def files_changed(path: str, base: str) -> list[str]:
    """Files that differ between ``base`` and the working tree (committed or not,
    untracked included), sorted."""
    names = set(f for f in git(path, "diff", "--name-only", "-z", base, "--").split("\0") if f)
    names.update(_untracked(path))
    return sorted(names)


def diff_stat(path: str, base: str) -> str:
    """``git diff --stat`` from ``base`` to the working tree, plus untracked files."""
    stat = git(path, "diff", "--stat", base, "--")
    extra = [f" {name} | new file (untracked)" for name in _untracked(path)]
    return "\n".join(filter(None, [stat, *extra]))


def remove_session(repo: str, session_id: str, root: str | None = None) -> list[str]:
    """Remove every worktree of the session (their branches stay); return their paths."""
    top = repo_root(repo)
    session_dir = Path(worktree_path(root or default_root(top), session_id, "x")).parent
    removed = []
    with locked(top):
        for path in _registered(top):
            if Path(path).parent == session_dir:
                git(top, "worktree", "remove", "--force", path)
                removed.append(path)
        if session_dir.is_dir():
            shutil.rmtree(session_dir, ignore_errors=True)
        git(top, "worktree", "prune")
    return removed
