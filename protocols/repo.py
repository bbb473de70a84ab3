"""Code over the bus: an agent whose host cannot see a session's repository gets the
commits it needs as a git bundle, in chunks it asks for a few at a time (credit-based flow
control), and sends its task's branch back the same way. The orchestrator, on the
repository's host, serves both; a repository is named by its session, never by a path.

Download: ``repo.fetch`` -> ``repo.offer`` (a bundle of the wanted commit less what the
agent has), then ``repo.chunk_get`` -> ``repo.chunk`` with at most *credit* requests in
flight, then ``repo.release``. Upload: ``repo.push`` -> ``repo.offer`` (a transfer id),
``repo.push_chunk`` -> ``ack`` with the same credit, then ``repo.push_done`` ->
``repo.pushed`` once the branch is in the user's repository.
"""

from __future__ import annotations

from pydantic import Field

from protocols.base import Body

SHA = r"^[0-9a-f]{40}$"
#: most bytes one chunk carries (the bus's message limit is 4 MiB)
MAX_CHUNK = 1024 * 1024


class RepoFetch(Body):
    TYPE = "repo.fetch"
    session_id: str = Field(min_length=1, max_length=64)
    want: str = Field(pattern=SHA)
    #: commits the asking host has already (the bundle leaves out what they reach)
    have: list[str] = Field(default_factory=list, max_length=256)
    #: a task branch to include when the repository has it (a retry continues on it)
    branch: str = Field(default="", max_length=200)


class RepoOffer(Body):
    TYPE = "repo.offer"
    transfer_id: str
    size: int = Field(ge=0)  # 0: nothing to send
    sha256: str = ""
    #: refs in the bundle -> the commit each points at
    refs: dict[str, str] = Field(default_factory=dict)


class RepoChunkGet(Body):
    TYPE = "repo.chunk_get"
    transfer_id: str = Field(min_length=1, max_length=64)
    offset: int = Field(ge=0)
    size: int = Field(gt=0, le=MAX_CHUNK)


class RepoChunk(Body):
    TYPE = "repo.chunk"
    BINARY = ("data",)
    transfer_id: str
    offset: int = Field(ge=0)
    data: bytes


class RepoRelease(Body):
    TYPE = "repo.release"
    transfer_id: str = Field(min_length=1, max_length=64)


class RepoPush(Body):
    TYPE = "repo.push"
    session_id: str = Field(min_length=1, max_length=64)
    task_id: str = Field(min_length=1, max_length=64)
    attempt_id: str = Field(min_length=1, max_length=64)
    branch: str = Field(min_length=1, max_length=200)
    commit: str = Field(pattern=SHA)
    size: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RepoPushChunk(Body):
    TYPE = "repo.push_chunk"
    BINARY = ("data",)
    transfer_id: str = Field(min_length=1, max_length=64)
    offset: int = Field(ge=0)
    data: bytes = Field(max_length=MAX_CHUNK)


class RepoPushDone(Body):
    TYPE = "repo.push_done"
    transfer_id: str = Field(min_length=1, max_length=64)


class RepoPushed(Body):
    TYPE = "repo.pushed"
    branch: str
    commit: str
