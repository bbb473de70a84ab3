"""Files over the bus in chunks, with credit-based flow control: at most ``credit`` chunks
are in flight per transfer, and the next one is asked for (or sent) only when one
arrives (or is acknowledged). A large file thus never fills the hub's queues, and other
messages pass between its chunks (the file-transfer pattern of the ZeroMQ guide)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Awaitable, Callable

from libs.peer import RequestTimeout
from protocols import Message
from protocols.base import Body
from protocols.repo import RepoChunk, RepoChunkGet, RepoPushChunk

Request = Callable[[str, Body], Awaitable[Message]]
#: times one chunk is asked for again after a timeout
CHUNK_RETRIES = 3


class TransferError(RuntimeError):
    pass


async def _retrying(request: Request, dst: str, body: Body) -> Message:
    for attempt in range(CHUNK_RETRIES + 1):
        try:
            return await request(dst, body)
        except RequestTimeout:
            if attempt == CHUNK_RETRIES:
                raise
    raise AssertionError("unreachable")


async def download(request: Request, dst: str, transfer_id: str, size: int, sha256: str,
                   out: Path, chunk: int, credit: int) -> None:
    """Fetch ``size`` bytes of transfer ``transfer_id`` from ``dst`` into ``out``; raise
    TransferError unless they hash to ``sha256``."""
    offsets = iter(range(0, size, chunk))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)

        async def lane() -> None:
            for offset in offsets:  # shared: each lane takes the next chunk not yet asked
                want = min(chunk, size - offset)
                reply = await _retrying(request, dst, RepoChunkGet(
                    transfer_id=transfer_id, offset=offset, size=want))
                body = reply.body
                if not isinstance(body, RepoChunk) or body.offset != offset \
                        or len(body.data) != want:
                    raise TransferError(f"chunk at {offset} of {transfer_id} came back wrong")
                os.pwrite(fd, body.data, offset)

        await asyncio.gather(*(lane() for _ in range(max(1, credit))))
    finally:
        os.close(fd)
    got = await asyncio.to_thread(file_sha256, out)
    if got != sha256:
        raise TransferError(f"transfer {transfer_id} arrived damaged (sha256 {got[:12]}, "
                            f"expected {sha256[:12]})")


async def upload(request: Request, dst: str, transfer_id: str, path: Path, chunk: int,
                 credit: int) -> None:
    """Send ``path`` to ``dst`` as the chunks of ``transfer_id``, each acknowledged."""
    size = path.stat().st_size
    offsets = iter(range(0, size, chunk))
    fd = os.open(path, os.O_RDONLY)
    try:
        async def lane() -> None:
            for offset in offsets:
                data = os.pread(fd, min(chunk, size - offset), offset)
                await _retrying(request, dst, RepoPushChunk(transfer_id=transfer_id,
                                                            offset=offset, data=data))

        await asyncio.gather(*(lane() for _ in range(max(1, credit))))
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
