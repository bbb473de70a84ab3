"""A bus peer: one DEALER to the hub that registers, heartbeats, detects a silent hub,
reconnects and re-registers, correlates requests with replies under deadlines, and
dispatches every other message to a handler per type.

Services, agents and CLI clients are all peers. A handler receives the decoded
``Message`` and may return a body, which is sent back as the reply; if it raises, the
sender gets an ``error`` reply (a ``ProtocolError`` keeps its code, anything else is
``internal``) and the peer keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import getpass
import os
import socket as pysocket
import time
from typing import Any, Awaitable, Callable

import zmq
from prometheus_client import CollectorRegistry

from libs.config import CommunicationConfig
from libs.log import EventLogger, get_logger
from libs.parts import parts
from libs.metrics import PeerMetrics
from libs.zmqio import Pump, context, socket
from protocols import ErrorCode, Message, ProtocolError, decode, encode, make_header
from protocols.errors import MAX_REASON, safe, safe_details
from protocols.codec import peek_header
from protocols.base import Body
from protocols.header import HUB
from protocols.peer import (
    MAX_BUNDLE,
    MAX_BUNDLE_BYTES,
    Bundle,
    Error,
    PeerDisconnect,
    PeerHeartbeat,
    PeerKind,
    PeerRegister,
    PeerRegistered,
)

Handler = Callable[[Message], Awaitable[Body | None]]

#: bundles holding requests whose refusal (``not_registered``) is still recognised: the
#: hub refuses at once, so only the most recent matter
MAX_BUNDLES_REMEMBERED = 256


#: seconds a stopping peer's goodbye to the hub gets to leave
GOODBYE_SECONDS = 0.5


class RequestFailed(Exception):
    """The other side answered a request with an ``error`` message."""

    def __init__(self, code: str, reason: str, details: dict[str, Any] | None = None):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.details = details or {}


class RequestTimeout(Exception):
    """No reply arrived before the request's deadline."""


def local_user() -> str:
    """This process's user name (its uid where the system has no name for it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class RegistrationRefused(Exception):
    """The hub refused this peer's registration (e.g. the name is taken)."""


class HubUnreachable(ConnectionError):
    """No hub answered the first registration within ``Peer.first_contact_deadline``."""


class Peer:
    def __init__(
        self,
        *,
        name: str,
        kind: PeerKind,
        comm: CommunicationConfig,
        role: str = "",
        capabilities: list[str] | None = None,
        capacity: int = 1,
        metrics_url: str = "",
        registry: CollectorRegistry | None = None,
        log: EventLogger | None = None,
        ctx: zmq.Context | None = None,
    ):
        self.name = name
        self.kind = kind
        self.comm = comm
        self.role = role
        self.capabilities = capabilities or []
        self.auth = ""  # see PeerRegister.auth
        self.capacity = capacity
        self.metrics_url = metrics_url
        self.host = pysocket.gethostname()  # the host it reports
        self.log = log or get_logger(name)
        self.metrics = PeerMetrics(registry or CollectorRegistry(), name)
        self._ctx = ctx or context()
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Future[Message]] = {}
        #: what each pending request sent (destination, frames), to send it again if the
        #: hub refuses it unrouted; and the ids it refused so, to resend once registered
        self._requests: dict[str, tuple[str, list[bytes], str]] = {}
        self._refused: list[str] = []
        #: the pending request each sent frame list is (by identity), and the requests in
        #: each recent bundle: a refused bundle refuses the requests inside it
        self._request_of: dict[int, str] = {}
        self._bundled: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pump: Pump | None = None
        self._pump_task: asyncio.Task[None] | None = None
        #: messages to send at the end of this turn of the loop, by destination (bundled)
        self._outgoing: dict[str, list[list[bytes]]] = {}
        self._flush_soon: asyncio.Handle | None = None
        #: called before anything queued is sent (e.g. the state store's commit: nothing
        #: may leave before the writes it reports are durable); one that raises drops
        #: what was queued
        self.before_flush: list[Callable[[], None]] = []
        self._last_hub = time.monotonic()
        self._unanswered = 0  # heartbeats sent since the hub was last heard
        self._stop = asyncio.Event()
        self._registered = asyncio.Event()
        self._reregister = False
        self._leaving = False  # stop() has begun: its goodbye is the last word to the hub
        self._attention = asyncio.Event()  # wakes run(): stopped, or must register again
        self.hub_id = ""
        self._reclaim = ""  # the hub's key for taking this name back after a reconnect
        self.heartbeat_body: Callable[[], PeerHeartbeat] = PeerHeartbeat
        self.on_registered: list[Callable[[], Any]] = []
        #: seconds to keep trying to reach the hub the first time (None: forever); once
        #: registered, a lost hub is always retried
        self.first_contact_deadline: float | None = None
        #: called with the seconds waited so far each time a first registration goes
        #: unanswered (a person-facing command prints a line)
        self.on_unreachable: Callable[[float], None] | None = None

    # ---- public API -----------------------------------------------------------------

    def on(self, type_: str, handler: Handler) -> None:
        self._handlers[type_] = handler

    def send(self, dst: str, body: Body, corr: str = "") -> str:
        """Send a one-way message (or a reply when ``corr`` is set); returns its id."""
        header = make_header(body.TYPE, self.name, dst, corr)
        self._send_frames(encode(header, body), dst)
        self.metrics.sent.labels(body.TYPE).inc()
        return header.id

    def reply(self, msg: Message, body: Body) -> None:
        self.send(msg.header.src, body, corr=msg.header.id)

    def reply_error(
        self, msg: Message, code: ErrorCode, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        self.reply(msg, Error(code=code, reason=safe(reason, MAX_REASON),
                              details=safe_details(details or {})))

    async def request(self, dst: str, body: Body, timeout: float | None = None) -> Message:
        """Send and wait for the reply. Raises RequestFailed or RequestTimeout."""
        timeout = self.comm.message_timeout if timeout is None else timeout
        header = make_header(body.TYPE, self.name, dst)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[header.id] = future
        frames = encode(header, body)
        self._requests[header.id] = (dst, frames, body.TYPE)
        self._request_of[id(frames)] = header.id
        started = time.perf_counter()
        try:
            self._send_frames(frames, dst)
            self.metrics.sent.labels(body.TYPE).inc()
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"no reply to {body.TYPE} from {dst!r} within {timeout:.1f}s"
            ) from None
        finally:
            self._pending.pop(header.id, None)
            self._requests.pop(header.id, None)
            self._request_of.pop(id(frames), None)
        self.metrics.request_seconds.labels(body.TYPE).observe(time.perf_counter() - started)
        if isinstance(reply.body, Error):
            raise RequestFailed(reply.body.code.value, reply.body.reason, reply.body.details)
        return reply

    async def wait_registered(self, timeout: float) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout)

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run a coroutine owned by this peer (kept referenced, cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def run(self) -> None:
        """Connect, register and heartbeat until ``stop()``; reconnect when the hub is silent."""
        interval = self.comm.heartbeat_interval
        while not self._stop.is_set():
            self._connect()
            try:
                await self._register()
            except (RegistrationRefused, HubUnreachable):
                self._disconnect_socket()
                raise
            if self._stop.is_set():
                break
            while not self._stop.is_set():
                try:  # the next heartbeat, or at once when stopped or dropped by the hub
                    await asyncio.wait_for(self._attention.wait(), interval)
                except asyncio.TimeoutError:
                    pass
                self._attention.clear()
                if self._stop.is_set():
                    break
                if self._leaving:
                    # the goodbye is on its way: no heartbeat, and no registering again
                    # when the hub answers not_registered to what was sent after it
                    continue
                if self._reregister:
                    self._reregister = False
                    self._registered.clear()
                    await self._register()
                    continue
                # silent: unanswered for the budget AND after `liveness` heartbeats; a loop
                # blocked for long (it sent nothing the hub could answer) asks once more
                # first, rather than replacing a socket that replies are still due on
                silent = time.monotonic() - self._last_hub
                if silent > interval * self.comm.liveness \
                        and self._unanswered >= self.comm.liveness:
                    self.log.warning("hub.silent", seconds=round(silent, 2), hub=self.comm.router())
                    self.metrics.reconnects.inc()
                    break
                self.send(HUB, self.heartbeat_body())
                self._unanswered += 1
            self._registered.clear()
            if not self._stop.is_set():
                self._disconnect_socket()
        # stop(): the socket is closed there

    async def stop(self, reason: str = "shutdown") -> None:
        self._leaving = True
        linger = 0
        # also while registering again (a stalled loop, a hub that said not_registered):
        # the hub may hold this socket registered still; if not, it answers not_registered
        if self._pump is not None and self.hub_id:
            try:
                self.send(HUB, PeerDisconnect(reason=reason))
                # the goodbye handed to ZeroMQ, then given a moment to leave after the close
                # (``zmqio.shutdown`` at the process's end): lost, it would leave this peer
                # in the hub's registry until the liveness budget ran out
                deadline = time.monotonic() + GOODBYE_SECONDS
                while (self._outgoing or self._pump.pending) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                linger = int(GOODBYE_SECONDS * 1000)
            except Exception:
                pass
        self._stop.set()
        self._attention.set()
        for task in list(self._tasks):
            task.cancel()
        self._disconnect_socket(linger)

    # ---- internals --------------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket(self._ctx, zmq.DEALER)
        sock.connect(self.comm.router())
        self._pump = Pump(sock, self._on_frames)
        self._pump_task = asyncio.ensure_future(self._pump.run())
        self._last_hub = time.monotonic()
        self._unanswered = 0

    def _disconnect_socket(self, linger_ms: int = 0) -> None:
        self._outgoing.clear()
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        if self._pump is not None:
            self._pump.close()
            self._pump.sock.close(linger=linger_ms)
            self._pump = None
        if self._pump_task is not None:
            self._pump_task.cancel()
            self._pump_task = None

    async def _register(self) -> None:
        body = PeerRegister(
            name=self.name, kind=self.kind, role=self.role, capabilities=self.capabilities,
            capacity=self.capacity, pid=os.getpid(), host=self.host,
            metrics_url=self.metrics_url, reclaim=self._reclaim, token=self.comm.token,
            user=local_user(), auth=self.auth,
        )
        wait = self.comm.heartbeat_interval * self.comm.liveness
        first_try = time.monotonic()
        while not self._stop.is_set():
            try:
                reply = await self.request(HUB, body, timeout=wait)
            except RequestTimeout:
                self.log.warning("hub.unreachable", hub=self.comm.router(), waited=wait)
                if not self.hub_id:  # never registered yet
                    waited = time.monotonic() - first_try
                    if self.on_unreachable is not None:
                        self.on_unreachable(waited)
                    deadline = self.first_contact_deadline
                    if deadline is not None and waited >= deadline:
                        raise HubUnreachable(f"no hub answered at {self.comm.router()} "
                                             f"within {deadline:g}s") from None
                continue
            except RequestFailed as exc:
                if exc.code == ErrorCode.NAME_TAKEN.value:
                    # a restarted process may find its predecessor's entry still there until
                    # the hub declares it lost; past that, the name is really taken
                    if time.monotonic() - first_try > 2 * wait + self.comm.heartbeat_interval:
                        raise RegistrationRefused(exc.reason) from None
                    self.log.warning("register.name_taken", reason=exc.reason)
                    await asyncio.sleep(self.comm.heartbeat_interval)
                    continue
                if exc.code == ErrorCode.UNAUTHORIZED.value:
                    raise RegistrationRefused(exc.reason) from None
                self.log.error("register.failed", code=exc.code, reason=exc.reason)
                await asyncio.sleep(self.comm.heartbeat_interval)
                continue
            assert isinstance(reply.body, PeerRegistered)
            self.hub_id = reply.body.hub_id
            self._reclaim = reply.body.reclaim
            self._registered.set()
            self.log.info("registered", hub=self.comm.router(), hub_id=self.hub_id)
            self._resend_refused()
            for callback in self.on_registered:
                callback()
            return

    def _resend_refused(self) -> None:
        """Send again the requests the hub refused unrouted while this peer was not
        registered (the hub had declared it lost): they were never delivered, so sending
        them again cannot make anything happen twice. Their deadlines are unchanged."""
        refused, self._refused = self._refused, []
        for request_id in refused:
            pending = self._requests.get(request_id)
            if pending is None:
                continue  # answered or given up meanwhile
            dst, frames, type_ = pending
            self._send_frames(frames, dst)
            self.metrics.resent.labels(type_).inc()
            self.log.info("request.resent", dst=dst, type=type_)

    def _send_frames(self, frames: list[bytes], dst: str) -> None:
        if self._pump is None:
            raise ConnectionError("not connected to the hub")
        if dst == HUB:  # the hub handles its own messages one by one
            self._pump.send(frames)
            return
        self._outgoing.setdefault(dst, []).append(frames)
        if self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush_outgoing)

    def _flush_outgoing(self) -> None:
        """Hand this turn's messages to the socket: alone, or several for one peer as
        bus.bundle messages (at most MAX_BUNDLE messages, about MAX_BUNDLE_BYTES each)."""
        if self._pump is None:
            self._flush_soon, self._outgoing = None, {}
            return  # disconnected meanwhile: lost like anything unsent on a closed socket
        # the hooks first: what they send (a commit's last writes may send) goes out now
        for hook in self.before_flush:
            try:
                hook()
            except Exception as exc:
                outgoing, self._outgoing, self._flush_soon = self._outgoing, {}, None
                dropped = sum(len(m) for m in outgoing.values())
                self.metrics.withheld.inc(dropped)
                self.log.error("send.withheld", error=repr(exc), messages=dropped,
                               why="what they report could not be made durable")
                return
        self._flush_soon = None
        outgoing, self._outgoing = self._outgoing, {}
        for dst, messages in outgoing.items():
            for part in parts(messages, lambda f: len(f[0]) + len(f[1]), MAX_BUNDLE,
                              MAX_BUNDLE_BYTES):
                self._send_bundle(dst, part)

    def _send_bundle(self, dst: str, part: list[list[bytes]]) -> None:
        """One message as itself; several as one bus.bundle."""
        assert self._pump is not None
        if len(part) == 1:
            self._pump.send(part[0])
            return
        header = make_header(Bundle.TYPE, self.name, dst)
        if self._request_of:
            inner = [r for r in map(self._request_of.get, map(id, part)) if r is not None]
            if inner:
                self._bundled[header.id] = inner
                if len(self._bundled) > MAX_BUNDLES_REMEMBERED:
                    self._bundled.popitem(last=False)
        self._pump.send(encode(header, Bundle.model_construct(
            messages=[(frames[0], frames[1]) for frames in part])))
        self.metrics.sent.labels(Bundle.TYPE).inc()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task.crashed", error=repr(task.exception()))

    def _on_frames(self, frames: list[bytes]) -> None:
        self._last_hub = time.monotonic()
        self._unanswered = 0
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            self._bad_input(frames, exc)
            return
        if isinstance(msg.body, Bundle):
            self.metrics.received.labels(Bundle.TYPE).inc()
            self._unbundle(msg.header.src, msg.body)
            return
        self._on_message(msg)

    def _unbundle(self, src: str, bundle: Bundle) -> None:
        for head, body in bundle.messages:
            try:
                msg = decode([head, body])
            except ProtocolError as exc:
                self._bad_input([head, body], exc, reply_to=src)
                continue
            if msg.header.src != src or msg.header.dst != self.name \
                    or isinstance(msg.body, Bundle):
                self.metrics.protocol_errors.labels(ErrorCode.SPOOFED_SOURCE.value, "in").inc()
                self.log.warning("bundle.refused", src=src, inner_src=safe(msg.header.src),
                                 dst=safe(msg.header.dst), type=msg.header.type)
                continue
            self._on_message(msg)

    def _on_message(self, msg: Message) -> None:
        header = msg.header
        self.metrics.received.labels(header.type).inc()
        if header.corr:
            future = self._pending.get(header.corr)
            dropped = isinstance(msg.body, Error) and msg.body.code == ErrorCode.NOT_REGISTERED
            if dropped:
                self._reregister = True  # the hub dropped us (it restarted or declared us lost)
                self._attention.set()
                if header.src == HUB and header.corr in self._bundled:
                    self._refused.extend(self._bundled.pop(header.corr))
                    return
                if header.src == HUB and header.corr in self._requests \
                        and future is not None and not future.done():
                    # refused unrouted: sent again once registered, within its deadline
                    self._refused.append(header.corr)
                    return
            if future is not None and not future.done():
                future.set_result(msg)
                return
            if dropped:
                return
            if header.type in self._handlers and not isinstance(msg.body, Error):
                # the answer to a message sent without waiting (e.g. a task.result the
                # agent resends until acknowledged): its own handler takes it
                self.spawn(self._dispatch(self._handlers[header.type], msg))
                return
            if header.type != PeerHeartbeat.TYPE:
                self.log.debug("reply.stale", type=header.type, corr=header.corr)
            return
        if isinstance(msg.body, Error):
            self.metrics.protocol_errors.labels(msg.body.code.value, "received").inc()
            if msg.body.code == ErrorCode.NOT_REGISTERED:
                self._reregister = True
                self._attention.set()
                return
            self.log.warning("error.received", src=header.src, code=msg.body.code.value,
                             reason=msg.body.reason)
            return
        if header.type == PeerHeartbeat.TYPE and header.src == HUB:
            return
        handler = self._handlers.get(header.type)
        if handler is None:
            self.reply_error(msg, ErrorCode.UNSUPPORTED,
                             f"{self.name} does not handle {header.type}")
            self.metrics.protocol_errors.labels(ErrorCode.UNSUPPORTED.value, "in").inc()
            return
        self.spawn(self._dispatch(handler, msg))

    async def _dispatch(self, handler: Handler, msg: Message) -> None:
        try:
            result = await handler(msg)
        except ProtocolError as exc:
            self.metrics.protocol_errors.labels(exc.code.value, "in").inc()
            self.reply_error(msg, exc.code, exc.reason, exc.details)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("handler.failed", type=msg.header.type)
            self.reply_error(msg, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if result is not None:
            self.reply(msg, result)

    def _bad_input(self, frames: list[bytes], exc: ProtocolError, reply_to: str = "") -> None:
        """Count and answer an undecodable message (``reply_to``: the verified sender of
        the bundle it came in, rather than the name its own header claims)."""
        self.metrics.protocol_errors.labels(exc.code.value, "in").inc()
        self.log.warning("bad.input", code=exc.code.value, reason=exc.reason)
        header = peek_header(frames)
        if header is not None and header.type != Error.TYPE:
            body = Error(code=exc.code, reason=exc.reason, details=exc.details)
            try:
                self.send(reply_to or header.src, body, corr=header.id)
            except (ProtocolError, ConnectionError):
                pass  # nothing more can be told to that sender
