"""A short-lived bus client (the CLI, tests, scripts): a Peer of kind ``client``."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from libs.config import CommunicationConfig
from libs.log import get_logger
from libs.parts import parts
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import MAX_MESSAGE_SIZE, Message
from protocols.base import Body
from protocols.command import MAX_BATCH, CommandAccepted, CommandSubmit, CommandSubmitBatch
from protocols.peer import PeerKind


class BatchRefused(Exception):
    """A later part of a long batch was refused; the parts before it were accepted."""

    def __init__(self, accepted: list[CommandAccepted], error: RequestFailed | RequestTimeout):
        super().__init__(f"{len(accepted)} command(s) accepted, then: {error}")
        self.accepted = accepted
        self.error = error


def batches(commands: list[CommandSubmit], limit: int = MAX_BATCH,
            max_bytes: int = MAX_MESSAGE_SIZE // 2) -> list[list[CommandSubmit]]:
    """``commands`` in message-sized parts: at most ``limit`` commands and about
    ``max_bytes`` of text each."""
    return parts(commands, lambda c: len(c.text.encode()) + len(c.repo.encode()) + 200,
                 limit, max_bytes)


class BusClient:
    """``async with BusClient(comm) as bus: reply = await bus.request("commands", body)``"""

    def __init__(self, comm: CommunicationConfig, name: str = "", connect_timeout: float = 10.0,
                 kind: PeerKind = PeerKind.CLIENT, host: str = ""):
        self.comm = comm
        self.name = name or f"cli-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.connect_timeout = connect_timeout
        self.peer = Peer(name=self.name, kind=kind, comm=comm, log=get_logger(self.name))
        if host:
            self.peer.host = host
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> "BusClient":
        self._task = asyncio.ensure_future(self.peer.run())
        registered = asyncio.ensure_future(self.peer.wait_registered(self.connect_timeout))
        await asyncio.wait({self._task, registered}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            registered.cancel()
            self._task.result()  # raises RegistrationRefused and the like
        try:
            registered.result()
        except asyncio.TimeoutError:
            await self.close()
            raise RequestTimeout(
                f"no hub answered at {self.comm.router()} within {self.connect_timeout:g}s"
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, dst: str, body: Body, timeout: float | None = None) -> Message:
        return await self.peer.request(dst, body, timeout)

    async def submit_many(self, commands: list[CommandSubmit],
                          timeout: float | None = None) -> list[CommandAccepted]:
        """Submit ``commands`` as sessions, one ``command.submit_batch`` per part of up to
        MAX_BATCH (each part is all-or-nothing). Raises BatchRefused, holding what was
        accepted, if a part after the first is refused; RequestFailed if the first is."""
        accepted: list[CommandAccepted] = []
        for part in batches(commands):
            try:
                reply = await self.request("commands", CommandSubmitBatch(commands=part), timeout)
            except (RequestFailed, RequestTimeout) as exc:
                if not accepted:
                    raise
                raise BatchRefused(accepted, exc) from None
            accepted.extend(reply.body.accepted)  # type: ignore[attr-defined]
        return accepted

    async def close(self) -> None:
        await self.peer.stop("client done")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
