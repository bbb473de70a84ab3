"""Publishing to and subscribing from the hub's event proxy."""

from __future__ import annotations

import asyncio
from typing import Callable

import zmq

from libs.log import EventLogger, get_logger
from libs.zmqio import Pump, context, socket
from protocols import Message, ProtocolError, decode_event, encode_event, make_header
from protocols.base import Body

EventHandler = Callable[[str, Message], None]


class EventPublisher:
    """A PUB socket connected to the hub's XSUB. Publishing never blocks: at the high-water
    mark ZeroMQ drops, which is the contract of events (state lives in the orchestrator)."""

    def __init__(self, endpoint: str, src: str, ctx: zmq.Context | None = None):
        self.src = src
        self.sock = socket(ctx or context(), zmq.PUB)
        self.sock.connect(endpoint)

    def publish(self, topic: str, body: Body) -> None:
        if self.sock.closed:  # shutting down: nobody is listening any more
            return
        frames = encode_event(topic, make_header(body.TYPE, self.src, "*"), body)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.close(linger=0)


class EventSubscriber:
    """A SUB socket on the hub's XPUB with topic-prefix filters, pumped on the loop."""

    def __init__(self, endpoint: str, topics: list[str], handler: EventHandler,
                 ctx: zmq.Context | None = None, log: EventLogger | None = None):
        self.sock = socket(ctx or context(), zmq.SUB)
        for topic in topics:
            self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.handler = handler
        self.log = log or get_logger("events")
        self.bad = 0
        self.pump = Pump(self.sock, self._on_frames)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.pump.run())

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            topic, msg = decode_event(frames)
        except ProtocolError as exc:
            self.bad += 1
            self.log.warning("event.bad", code=exc.code.value, reason=exc.reason)
            return
        try:
            self.handler(topic, msg)
        except Exception:
            self.log.exception("event.handler_failed", topic=topic)

    async def close(self) -> None:
        self.pump.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close(linger=0)
