"""ZeroMQ sockets on an asyncio loop, with all I/O of a socket in ONE coroutine.

``Pump`` owns a plain (synchronous) zmq socket and watches its ZMQ_FD with the loop's
``add_reader``. Its single coroutine alternates: flush the outbox, drain every ready
message with NOBLOCK, then wait until the FD fires or something is queued. Everything runs
on the loop's one thread, so other code may call ``send()``: it sends at once when nothing
is queued (and wakes the pump if that send consumed the FD's edge), else queues. Code
running inside the receive callback may call ``send_now()`` to learn about delivery
failures at once (the hub's ROUTER_MANDATORY).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable

import zmq

from libs.log import get_logger
from libs.security import apply_client
from protocols.codec import MAX_MESSAGE_SIZE

_log = get_logger("pump")

#: largest frame a socket reads at all (see ``socket``)
SOCKET_MAX_FRAME = MAX_MESSAGE_SIZE + 1024 * 1024

FrameHandler = Callable[[list[bytes]], None]

#: Messages handled before the pump yields to other coroutines.
_BATCH = 512


def context() -> zmq.Context:
    return zmq.Context.instance()


def shutdown() -> None:
    """At the process's end: sockets still open close at once, and those closed with a
    linger (a peer's goodbye to the hub) get that long to deliver what they still hold.
    Without it, ZeroMQ's I/O thread dies with the process and may take the last message
    with it."""
    context().destroy(linger=0)


def socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket with linger 0 and a limit on what it receives: a frame somewhat over the
    protocol's size limit is still read (and answered with a typed ``oversize`` error), a
    larger one makes ZeroMQ drop the sender's connection before reading it; client kinds
    get CURVE keys when security is configured."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_FRAME)
    apply_client(sock)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind and return the real endpoint (port 0 and ``tcp://*:0`` resolved)."""
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class Pump:
    def __init__(self, sock: zmq.Socket, on_frames: FrameHandler, user_ids: bool = False):
        """With ``user_ids``, ``on_frames`` is called as ``on_frames(frames, user_id)``:
        each message's authenticated ZAP ``User-Id`` (the key name under CurveZMQ)."""
        self.sock = sock
        self.on_frames: Callable[..., None] = on_frames
        self.user_ids = user_ids
        self._outbox: collections.deque[list[bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._fd = sock.getsockopt(zmq.FD)
        self.dropped = 0  # messages the socket refused (HWM, unroutable)
        self.crashed = 0  # messages whose handler raised (logged; the pump goes on)

    @property
    def pending(self) -> int:
        """Messages queued and not yet handed to ZeroMQ."""
        return len(self._outbox)

    def send(self, frames: list[bytes]) -> None:
        """Send now if nothing waits before these frames, else queue them (in order) for
        the pump's coroutine: a lone reply leaves without waiting for the pump's turn."""
        if self._outbox or self._closed:
            self._outbox.append(frames)
            self._wake.set()
            return
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # full (HWM): the pump retries
            self._outbox.append(frames)
            self._wake.set()
            return
        except zmq.ZMQError:
            self.dropped += 1  # e.g. EHOSTUNREACH; the message cannot be delivered
        # a send may consume the edge of ZMQ_FD that announced a message received: the
        # pump looks again rather than wait for an edge that will not come
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._wake.set()

    def send_now(self, frames: list[bytes]) -> None:
        """Send immediately. Only from inside ``on_frames`` (the pump's own coroutine)."""
        self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._wake.set)
        try:
            while not self._closed:
                self._wake.clear()
                self._flush()
                handled = self._drain()
                if self._closed:
                    break
                if handled >= _BATCH:
                    await asyncio.sleep(0)  # let others run, then continue draining
                    continue
                # the drain ended on EAGAIN, whose recv took in ZeroMQ's pending commands:
                # a message arriving from now on signals the FD again
                if self._outbox:
                    # socket full (HWM): retry shortly rather than spinning
                    try:
                        await asyncio.wait_for(self._wake.wait(), 0.005)
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self._wake.wait()
        finally:
            loop.remove_reader(self._fd)

    def _flush(self) -> None:
        while self._outbox:
            try:
                self.sock.send_multipart(self._outbox[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError:
                self.dropped += 1  # e.g. EHOSTUNREACH; the message cannot be delivered
            self._outbox.popleft()

    def _drain(self) -> int:
        n = 0
        while n < _BATCH and not self._closed:
            try:
                if self.user_ids:
                    parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    frames, extra = [p.bytes for p in parts], (_user_id(parts),)
                else:
                    frames, extra = self.sock.recv_multipart(flags=zmq.NOBLOCK), ()
            except zmq.Again:
                break
            n += 1
            try:
                self.on_frames(frames, *extra)
            except Exception:  # one bad message must not stop the loop
                self.crashed += 1
                _log.exception("frames.crashed", frames=len(frames))
        return n


def _user_id(parts: list[zmq.Frame]) -> str:
    """The ZAP User-Id of a received message ("" if it has none)."""
    try:
        return parts[-1].get("User-Id") or ""
    except zmq.ZMQError:  # no metadata on this message
        return ""
