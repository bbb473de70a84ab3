"""The repository's side of code over the bus (see protocols/repo.py): bundles of a
session's commits for agents on hosts that cannot see its repository, and their task
branches taken back into it as ``ccaa/<session>/<task>``.

A repository is only ever named by a session, and an agent may only send back the branch
of a task of that session: nothing here reads or writes any other path or ref."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs import gitbundle, worktree
from libs.config import SystemConfig
from libs.log import EventLogger
from libs.transfer import file_sha256
from protocols import ErrorCode, Message, ProtocolError
from protocols.peer import Ack
from protocols.repo import (RepoChunk, RepoChunkGet, RepoFetch, RepoOffer, RepoPush,
                            RepoPushChunk, RepoPushDone, RepoPushed, RepoRelease)

#: ref names the download bundles carry (temporary in the user's repository)
TRANSFER_REF = "refs/ccaa/transfer/"


@dataclass
class Transfer:
    id: str
    path: Path
    size: int
    repo: str
    push: RepoPush | None = None  # an upload, else a download
    received: dict[int, int] = field(default_factory=dict)  # offset -> bytes (uploads)
    last_used: float = field(default_factory=time.monotonic)


class RepoMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.bytes = Counter("ccaa_repo_transfer_bytes_total", "bytes of repository bundles "
                             "sent to agents (out) and received from them (in)",
                             ["direction"], registry=registry)
        self.transfers = Counter("ccaa_repo_transfers_total", "bundles made for agents "
                                 "(fetch, or empty: the agent had everything) and branches "
                                 "taken back (push)", ["kind"], registry=registry)
        self.open = Gauge("ccaa_repo_transfers_open", "transfers in progress",
                          registry=registry)
        for d in ("in", "out"):
            self.bytes.labels(d)
        for k in ("fetch", "empty", "push"):
            self.transfers.labels(k)


class RepoServer:
    def __init__(self, config: SystemConfig, repo_of: Callable[[str], str | None],
                 has_task: Callable[[str, str], bool], registry: CollectorRegistry,
                 log: EventLogger):
        self.cfg = config.code_transfer
        self.dir = config.data_path() / "transfers"
        self.repo_of = repo_of  # session id -> its repository ("" / None: none)
        self.has_task = has_task  # (session id, task id) -> the task is the session's
        self.metrics = RepoMetrics(registry)
        self.log = log
        self.transfers: dict[str, Transfer] = {}

    @property
    def handlers(self) -> dict[str, Callable[[Message], Awaitable[Any]]]:
        return {RepoFetch.TYPE: self.on_fetch, RepoChunkGet.TYPE: self.on_chunk,
                RepoRelease.TYPE: self.on_release, RepoPush.TYPE: self.on_push,
                RepoPushChunk.TYPE: self.on_push_chunk, RepoPushDone.TYPE: self.on_push_done}

    # ---- downloads ----------------------------------------------------------------------

    async def on_fetch(self, msg: Message) -> RepoOffer:
        body = msg.body
        assert isinstance(body, RepoFetch)
        repo = self._repo(body.session_id)
        self._make_room()
        if not await asyncio.to_thread(gitbundle.has_commit, repo, body.want):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"commit {body.want[:12]} is not in "
                                f"session {body.session_id}'s repository")
        tid = uuid.uuid4().hex
        refs = {f"{TRANSFER_REF}{tid}": body.want}
        if body.branch:
            self._check_branch(body.session_id, body.branch)
            tip = await asyncio.to_thread(
                worktree.git, repo, "rev-parse", "--verify", "--quiet",
                f"refs/heads/{body.branch}^{{commit}}", check=False)
            if tip:
                refs[f"refs/heads/{body.branch}"] = tip
        have = await asyncio.to_thread(gitbundle.present, repo, body.have)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{tid}.bundle"
        made = await asyncio.to_thread(gitbundle.create, repo, refs, have, path)
        if not made:
            self.metrics.transfers.labels("empty").inc()
            return RepoOffer(transfer_id=tid, size=0, refs=refs)
        size = path.stat().st_size
        digest = await asyncio.to_thread(file_sha256, path)
        self.transfers[tid] = Transfer(tid, path, size, repo)
        self.metrics.transfers.labels("fetch").inc()
        self.metrics.open.set(len(self.transfers))
        self.log.info("repo.offer", session=body.session_id, agent=msg.header.src,
                      want=body.want[:12], have=len(have), bytes=size, transfer=tid)
        return RepoOffer(transfer_id=tid, size=size, sha256=digest, refs=refs)

    async def on_chunk(self, msg: Message) -> RepoChunk:
        body = msg.body
        assert isinstance(body, RepoChunkGet)
        t = self._transfer(body.transfer_id, upload=False)
        if body.offset >= t.size:
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"offset {body.offset} is past the end ({t.size} bytes)")
        data = await asyncio.to_thread(_read, t.path, body.offset, body.size)
        self.metrics.bytes.labels("out").inc(len(data))
        return RepoChunk(transfer_id=t.id, offset=body.offset, data=data)

    async def on_release(self, msg: Message) -> Ack:
        body = msg.body
        assert isinstance(body, RepoRelease)
        t = self.transfers.get(body.transfer_id)
        if t is not None and t.push is None:
            self._drop(t)
        return Ack(detail="released")

    # ---- uploads ------------------------------------------------------------------------

    async def on_push(self, msg: Message) -> RepoOffer:
        body = msg.body
        assert isinstance(body, RepoPush)
        repo = self._repo(body.session_id)
        if not self.has_task(body.session_id, body.task_id):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"session {body.session_id} has no "
                                f"task {body.task_id}")
        if body.branch != worktree.branch_name(body.session_id, body.task_id):
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"a task's work goes back only on its "
                                f"own branch "
                                f"{worktree.branch_name(body.session_id, body.task_id)}")
        self._make_room()
        tid = uuid.uuid4().hex
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{tid}.incoming"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, body.size)
        os.close(fd)
        self.transfers[tid] = Transfer(tid, path, body.size, repo, push=body)
        self.metrics.open.set(len(self.transfers))
        return RepoOffer(transfer_id=tid, size=body.size)

    async def on_push_chunk(self, msg: Message) -> Ack:
        body = msg.body
        assert isinstance(body, RepoPushChunk)
        t = self._transfer(body.transfer_id, upload=True)
        if body.offset + len(body.data) > t.size or not body.data:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"chunk at {body.offset} of "
                                f"{len(body.data)} bytes does not fit {t.size} bytes")
        await asyncio.to_thread(_write, t.path, body.offset, body.data)
        t.received[body.offset] = len(body.data)
        self.metrics.bytes.labels("in").inc(len(body.data))
        return Ack(detail="chunk")

    async def on_push_done(self, msg: Message) -> RepoPushed:
        body = msg.body
        assert isinstance(body, RepoPushDone)
        t = self._transfer(body.transfer_id, upload=True)
        push = t.push
        assert push is not None
        try:
            if sum(t.received.values()) != t.size:
                raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{sum(t.received.values())} "
                                    f"of {t.size} bytes arrived")
            if await asyncio.to_thread(file_sha256, t.path) != push.sha256:
                raise ProtocolError(ErrorCode.INVALID_REQUEST, "the bundle arrived damaged "
                                    "(sha256 differs)")
            incoming = f"refs/ccaa/incoming/{t.id}"
            try:
                await asyncio.to_thread(gitbundle.fetch, t.repo, t.path,
                                        [f"+refs/heads/{push.branch}:{incoming}"])
                tip = await asyncio.to_thread(worktree.git, t.repo, "rev-parse", incoming)
                if tip != push.commit:
                    raise ProtocolError(ErrorCode.INVALID_REQUEST, f"the bundle's "
                                        f"{push.branch} is {tip[:12]}, not {push.commit[:12]}")
                # update-ref: the branch may be checked out in a worktree of an earlier
                # attempt on this host, which `git fetch` would refuse to move
                await asyncio.to_thread(worktree.git, t.repo, "update-ref",
                                        f"refs/heads/{push.branch}", push.commit)
            except RuntimeError as exc:
                raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                    f"the branch could not be taken: {exc}") from None
            finally:
                await asyncio.to_thread(worktree.git, t.repo, "update-ref", "-d", incoming,
                                        check=False)
        finally:
            self._drop(t)
        self.metrics.transfers.labels("push").inc()
        self.log.info("repo.pushed", session=push.session_id, task=push.task_id,
                      agent=msg.header.src, branch=push.branch, commit=push.commit[:12],
                      bytes=t.size)
        return RepoPushed(branch=push.branch, commit=push.commit)

    # ---- bookkeeping --------------------------------------------------------------------

    def _repo(self, session_id: str) -> str:
        repo = self.repo_of(session_id)
        if not repo:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {session_id} with a "
                                "git repository")
        return repo

    def _check_branch(self, session_id: str, branch: str) -> None:
        prefix = worktree.branch_name(session_id, "t").rsplit("/", 1)[0] + "/"
        if not branch.startswith(prefix) or ".." in branch:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{branch!r} is not a branch of "
                                f"session {session_id}")

    def _transfer(self, tid: str, upload: bool) -> Transfer:
        t = self.transfers.get(tid)
        if t is None or (t.push is not None) != upload:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no transfer {tid} in progress "
                                "(finished, expired or never started)")
        t.last_used = time.monotonic()
        return t

    def _make_room(self) -> None:
        now = time.monotonic()
        for t in list(self.transfers.values()):
            if now - t.last_used > self.cfg.transfer_idle:
                self.log.warning("repo.transfer_expired", transfer=t.id)
                self._drop(t)
        if len(self.transfers) >= self.cfg.max_transfers:
            raise ProtocolError(ErrorCode.BUSY, f"{len(self.transfers)} transfers in "
                                "progress; ask again shortly")

    def _drop(self, t: Transfer) -> None:
        self.transfers.pop(t.id, None)
        try:
            t.path.unlink()
        except FileNotFoundError:
            pass
        self.metrics.open.set(len(self.transfers))

    def close(self) -> None:
        for t in list(self.transfers.values()):
            self._drop(t)


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _write(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
