"""Where an agent's task gets its repository: in place when this host has the session's
repository (same path, the base commit present), else from this host's cache of it, which
the commits it lacks reach over the bus (see protocols/repo.py); and how the task's branch
goes back to the repository's host when the attempt ends.

One cache per repository per host (``code_transfer.cache_dir``, default
``DATA_DIR/repos``), shared by the host's agents under a file lock; later tasks fetch
only the commits the cache does not have yet."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs import gitbundle, transfer, worktree
from libs.config import SystemConfig
from libs.log import EventLogger
from libs.peer import Peer
from protocols.repo import RepoFetch, RepoOffer, RepoPush, RepoPushDone, RepoRelease
from protocols.task import TaskSpec

#: refs in a cache that say which commits it has (what later fetches leave out)
HAVE = "refs/ccaa/have/"
#: have-refs a cache keeps (the newest; older commits stay, they are just not named)
HAVE_KEPT = 200


@dataclass
class Source:
    repo: str  # the git repository to make the worktree from
    transferred: bool  # a cache of the session's repository, not the repository itself


class CodeSource:
    def __init__(self, config: SystemConfig, peer: Peer, log: EventLogger):
        self.cfg = config.code_transfer
        self.root = Path(self.cfg.cache_dir).expanduser() if self.cfg.cache_dir \
            else config.data_path() / "repos"
        self.request = peer.request
        self.spawn = peer.spawn
        self.log = log
        self._locks: dict[str, asyncio.Lock] = {}

    def may_transfer(self, spec: TaskSpec) -> bool:
        """False when the task's repository surely does not come over the bus (no git
        needed to tell: most tasks that do not run in a worktree of their own)."""
        return bool(spec.isolate and spec.base_commit) and self.cfg.mode != "never"

    def wants_transfer(self, spec: TaskSpec) -> bool:
        """Whether the task's repository comes over the bus (blocking: runs git)."""
        if not self.may_transfer(spec):
            return False
        if self.cfg.mode == "always":
            return True
        cwd = spec.cwd
        return not (cwd and os.path.isdir(cwd) and worktree.is_git_repo(cwd)
                    and gitbundle.has_commit(cwd, spec.base_commit))

    def cache_path(self, spec: TaskSpec) -> Path:
        key = hashlib.sha256(f"{spec.owner}\0{spec.cwd}".encode()).hexdigest()[:16]
        name = os.path.basename(spec.cwd.rstrip("/")) or "repo"
        return self.root / f"{name}-{key}"

    async def checkout(self, spec: TaskSpec, progress: Any) -> Source:
        """The repository to make the task's worktree from, with the base commit in it."""
        # (no thread hop for the common case that needs no git to decide)
        if not self.may_transfer(spec) or not await asyncio.to_thread(self.wants_transfer, spec):
            return Source(os.path.abspath(spec.cwd or os.getcwd()), False)
        cache = self.cache_path(spec)
        lock = self._locks.setdefault(str(cache), asyncio.Lock())
        async with lock:  # this agent's tasks one at a time, other agents by file lock
            fd = await asyncio.to_thread(_lock_file, cache.with_suffix(".lock"))
            try:
                await self._fill(spec, cache, progress)
            finally:
                os.close(fd)  # releases the lock
        return Source(str(cache), True)

    async def _fill(self, spec: TaskSpec, cache: Path, progress: Any) -> None:
        """Bring the base commit and the task's branch as the repository's host has it
        (a retry continues on it, whichever host ran the attempt before) into the cache;
        only what the cache lacks travels."""
        repo = str(cache)
        if not (cache / ".git").exists():
            await asyncio.to_thread(_init, cache)
        branch = worktree.branch_name(spec.session_id, spec.task_id)
        started = time.monotonic()
        have = await asyncio.to_thread(gitbundle.heads, repo, HAVE)
        offer = (await self.request(spec.owner, RepoFetch(
            session_id=spec.session_id, want=spec.base_commit, have=have,
            branch=branch))).body
        assert isinstance(offer, RepoOffer)
        if offer.size:
            try:
                with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                    bundle = Path(tmp) / "fetch.bundle"
                    await transfer.download(self.request, spec.owner, offer.transfer_id,
                                            offer.size, offer.sha256, bundle,
                                            self.cfg.chunk_kb * 1024, self.cfg.credit)
                    await asyncio.to_thread(gitbundle.fetch, repo, bundle,
                                            [f"+{ref}:{HAVE}{sha}"
                                             for ref, sha in offer.refs.items()])
            finally:
                # not waited for: the bundle also expires on its own
                self.spawn(self.request(spec.owner, RepoRelease(transfer_id=offer.transfer_id)))
        await asyncio.to_thread(_settle, repo, offer.refs, branch)
        seconds = round(time.monotonic() - started, 3)
        summary = (f"fetched {offer.size} bytes for {spec.base_commit[:12]} in {seconds}s"
                   if offer.size else f"base {spec.base_commit[:12]} already in this "
                   "host's cache")
        progress("code", summary, {"transferred_bytes": offer.size, "seconds": seconds,
                                   "cache": repo})
        self.log.info("code.fetched", task=spec.task_id, bytes=offer.size, seconds=seconds,
                      cache=repo)

    async def send_back(self, spec: TaskSpec, cache: str, branch: str, base: str,
                        commit: str) -> int:
        """Send the task's branch (its commits beyond ``base``) to the repository's host;
        returns the bytes sent (0: nothing new)."""
        if not commit or commit == base:
            return 0
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            bundle = Path(tmp) / "push.bundle"
            # the repository's host has the base and whatever this cache got from it
            known = [base, *await asyncio.to_thread(gitbundle.heads, cache, HAVE)]
            made = await asyncio.to_thread(gitbundle.create, cache,
                                           {f"refs/heads/{branch}": commit}, known, bundle)
            if not made:
                return 0
            size = bundle.stat().st_size
            digest = await asyncio.to_thread(transfer.file_sha256, bundle)
            offer = (await self.request(spec.owner, RepoPush(
                session_id=spec.session_id, task_id=spec.task_id,
                attempt_id=spec.attempt_id, branch=branch, commit=commit, size=size,
                sha256=digest))).body
            assert isinstance(offer, RepoOffer)
            await transfer.upload(self.request, spec.owner, offer.transfer_id, bundle,
                                  self.cfg.chunk_kb * 1024, self.cfg.credit)
            await self.request(spec.owner, RepoPushDone(transfer_id=offer.transfer_id))
        # the cache has this commit now: later fetches need not send it
        await asyncio.to_thread(worktree.git, cache, "update-ref", f"{HAVE}{commit}", commit)
        return size


def _prune_have(repo: str, keep: int = HAVE_KEPT) -> None:
    """Only the newest ``keep`` have-refs stay: fetches name at most 100 of them anyway."""
    old = worktree.git(repo, "for-each-ref", "--sort=-committerdate", "--format=%(refname)",
                       HAVE).split()[keep:]
    if old:
        worktree.git(repo, "update-ref", "--stdin",
                     input="".join(f"delete {ref}\n" for ref in old))


def _settle(repo: str, refs: dict[str, str], branch: str) -> None:
    """After a fetch: mark what the cache has, and set the task's branch to where the
    repository's host has it (or remove it when that host has none: the work that never
    went back is not the task's)."""
    tip = ""
    for ref, sha in refs.items():
        if not gitbundle.has_commit(repo, sha):
            raise RuntimeError(f"{ref} ({sha[:12]}) did not arrive")
        worktree.git(repo, "update-ref", f"{HAVE}{sha}", sha)
        if ref == f"refs/heads/{branch}":
            tip = sha
    current = worktree.git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}",
                           check=False)
    if current != tip:
        worktree.remove_worktrees_of(repo, branch)  # a leftover of a killed attempt
        if tip:
            worktree.git(repo, "update-ref", f"refs/heads/{branch}", tip)
        else:
            worktree.git(repo, "branch", "-D", branch)
    _prune_have(repo)


def _init(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    worktree.git(str(path), "init", "-q")


def _lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
