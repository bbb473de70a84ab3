"""A short-lived bus client (the CLI, tests, scripts): a Peer of kind ``client``."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from libs.config import CommunicationConfig
from libs.log import get_logger
from libs.peer import Peer, RequestTimeout
from protocols import Message
from protocols.base import Body
from protocols.peer import PeerKind


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

    async def close(self) -> None:
        await self.peer.stop("client done")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
