"""The repository's side of code over the bus, against a real git repository: bundles
leave out what the asker has, chunks come back exact, and an agent can only send back
its own task's branch, whole and undamaged."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from libs import gitbundle
from libs.config import load_config
from libs.log import get_logger
from libs.metrics import new_registry
from libs.transfer import file_sha256
from protocols import ErrorCode, Message, ProtocolError, make_header
from protocols.repo import (RepoChunkGet, RepoFetch, RepoPush, RepoPushChunk, RepoPushDone,
                            RepoRelease)
from services.orchestrator.repo_server import RepoServer

pytestmark = pytest.mark.timeout(30)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", name)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "d@x")
    git(path, "config", "user.name", "d")
    return path


def server(tmp_path: Path, repo: Path, **cfg) -> RepoServer:
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path / "data"),
                                                "code_transfer": cfg})
    return RepoServer(config, lambda sid: str(repo) if sid == "s1" else None,
                      lambda sid, tid: sid == "s1" and tid == "t1", new_registry(),
                      get_logger("test"))


def ask(handler, body):
    return asyncio.run(handler(Message(make_header(body.TYPE, "agent-x", "orchestrator"), body)))


def download(srv: RepoServer, offer, out: Path) -> None:
    with open(out, "wb") as f:
        for offset in range(0, offer.size, 100):
            chunk = ask(srv.on_chunk, RepoChunkGet(transfer_id=offer.transfer_id,
                                                   offset=offset, size=100))
            assert chunk.offset == offset
            f.write(chunk.data)
    assert file_sha256(out) == offer.sha256


def test_a_bundle_leaves_out_what_the_asker_has_and_arrives_whole(tmp_path, repo):
    first = commit(repo, "a.txt", "a" * 5000)
    second = commit(repo, "b.txt", "b" * 300)
    srv = server(tmp_path, repo)
    full = ask(srv.on_fetch, RepoFetch(session_id="s1", want=second))
    part = ask(srv.on_fetch, RepoFetch(session_id="s1", want=second, have=[first, "f" * 40]))
    assert 0 < part.size < full.size
    cache = tmp_path / "cache"
    git(tmp_path, "init", "-q", str(cache))
    out = tmp_path / "x.bundle"
    download(srv, full, out)
    gitbundle.fetch(str(cache), out, [f"+{ref}:refs/ccaa/have/{sha}"
                                      for ref, sha in full.refs.items()])
    assert gitbundle.has_commit(str(cache), second)
    # nothing to send when the asker has it all; the repository keeps no temporary refs
    none = ask(srv.on_fetch, RepoFetch(session_id="s1", want=first, have=[second]))
    assert none.size == 0
    assert "refs/ccaa/transfer" not in git(repo, "for-each-ref")
    ask(srv.on_release, RepoRelease(transfer_id=full.transfer_id))
    with pytest.raises(ProtocolError) as gone:
        ask(srv.on_chunk, RepoChunkGet(transfer_id=full.transfer_id, offset=0, size=10))
    assert gone.value.code == ErrorCode.NOT_FOUND
    assert not Path(tmp_path / "data" / "transfers" / f"{full.transfer_id}.bundle").exists()


def test_only_sessions_name_repositories_and_only_known_commits_are_sent(tmp_path, repo):
    sha = commit(repo, "a.txt", "a")
    srv = server(tmp_path, repo)
    for body, code in ((RepoFetch(session_id="other", want=sha), ErrorCode.NOT_FOUND),
                       (RepoFetch(session_id="s1", want="0" * 40), ErrorCode.NOT_FOUND),
                       (RepoFetch(session_id="s1", want=sha, branch="main"),
                        ErrorCode.INVALID_REQUEST),
                       (RepoFetch(session_id="s1", want=sha, branch="ccaa/s1/../../main"),
                        ErrorCode.INVALID_REQUEST)):
        with pytest.raises(ProtocolError) as refused:
            ask(srv.on_fetch, body)
        assert refused.value.code == code, body


def test_a_task_branch_comes_back_only_whole_and_only_as_its_own(tmp_path, repo):
    base = commit(repo, "a.txt", "a")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    git(work, "config", "user.email", "w@x")
    git(work, "config", "user.name", "w")
    git(work, "checkout", "-q", "-b", "ccaa/s1/t1")
    tip = commit(work, "w.txt", "work " * 100)
    bundle = tmp_path / "push.bundle"
    assert gitbundle.create(str(work), {"refs/heads/ccaa/s1/t1": tip}, [base], bundle)
    size, digest = bundle.stat().st_size, file_sha256(bundle)
    srv = server(tmp_path, repo)

    def push(**over):
        body = dict(session_id="s1", task_id="t1", attempt_id="a1", branch="ccaa/s1/t1",
                    commit=tip, size=size, sha256=digest)
        body.update(over)
        return ask(srv.on_push, RepoPush(**body))

    for over in ({"branch": "main"}, {"task_id": "t2", "branch": "ccaa/s1/t2"},
                 {"session_id": "s2"}):
        with pytest.raises(ProtocolError):
            push(**over)
    data = bundle.read_bytes()
    # a damaged bundle is refused and nothing lands
    bad = push()
    ask(srv.on_push_chunk, RepoPushChunk(transfer_id=bad.transfer_id, offset=0,
                                         data=data[:-1] + bytes([data[-1] ^ 0xFF])))
    with pytest.raises(ProtocolError, match="damaged"):
        ask(srv.on_push_done, RepoPushDone(transfer_id=bad.transfer_id))
    # a short one too
    short = push()
    ask(srv.on_push_chunk, RepoPushChunk(transfer_id=short.transfer_id, offset=0, data=data[:10]))
    with pytest.raises(ProtocolError, match=f"10 of {size} bytes"):
        ask(srv.on_push_done, RepoPushDone(transfer_id=short.transfer_id))
    assert git(repo, "branch", "--list", "ccaa/s1/t1") == ""
    # whole, in chunks out of order: the branch is in the user's repository
    good = push()
    for offset in sorted(range(0, size, 64), reverse=True):
        ask(srv.on_push_chunk, RepoPushChunk(transfer_id=good.transfer_id, offset=offset,
                                             data=data[offset:offset + 64]))
    done = ask(srv.on_push_done, RepoPushDone(transfer_id=good.transfer_id))
    assert done.commit == tip and git(repo, "rev-parse", "ccaa/s1/t1") == tip
    assert git(repo, "show", "ccaa/s1/t1:w.txt").startswith("work")
    assert "refs/ccaa/incoming" not in git(repo, "for-each-ref")
    assert srv.transfers == {}


def test_transfers_are_bounded(tmp_path, repo):
    sha = commit(repo, "a.txt", "a" * 1000)
    srv = server(tmp_path, repo, max_transfers=2)
    ask(srv.on_fetch, RepoFetch(session_id="s1", want=sha))
    ask(srv.on_fetch, RepoFetch(session_id="s1", want=sha))
    with pytest.raises(ProtocolError) as busy:
        ask(srv.on_fetch, RepoFetch(session_id="s1", want=sha))
    assert busy.value.code == ErrorCode.BUSY
