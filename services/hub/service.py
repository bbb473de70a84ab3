"""The hub's logic: route every message by destination, keep the peer registry, answer
heartbeats, declare silent peers lost, and answer bad input with typed errors.

The hub routes on the header alone; it never decodes bodies it only forwards.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from typing import Any, Callable

import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.config import CommunicationConfig
from libs.security import Keyring
from libs.log import EventLogger, get_logger
from protocols import ErrorCode, ProtocolError, decode_header, encode, encode_event, make_header
from protocols.errors import safe
from protocols.base import Body
from protocols.codec import decode_body, peek_header
from protocols.events import KEYS_TOPIC, KeysChanged, PeerEvent, peer_topic
from protocols.header import HUB, Header
from protocols.node import NodeConfigGet, NodeConfigReply
from protocols.peer import (
    Error,
    PeerDisconnect,
    PeerHeartbeat,
    PeerKind,
    PeerRegister,
    PeerRegistered,
    PeerState,
    RegistryList,
    RegistryListReply,
)
from services.hub.registry import PeerEntry, PeerTable

Send = Callable[[list[bytes]], None]


class HubMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.routed = Counter("ccaa_hub_routed_total", "messages routed to a peer",
                              registry=registry)
        self.errors = Counter("ccaa_hub_errors_total", "error replies sent by the hub, by code",
                              ["code"], registry=registry)
        self.peers = Gauge("ccaa_hub_peers", "registered peers, by kind", ["kind"],
                           registry=registry)
        self.lost = Counter("ccaa_hub_peers_lost_total", "peers declared lost, by kind",
                            ["kind"], registry=registry)
        self.events = Counter("ccaa_hub_events_published_total", "events the hub published",
                              ["topic"], registry=registry)
        self.refused = Counter("ccaa_hub_refused_total",
                               "registrations and handshakes the hub refused, by reason",
                               ["reason"], registry=registry)
        # every series exists from the start, so increase() sees the first event
        for reason in ("token", "key", "name_taken", "handshake"):
            self.refused.labels(reason)
        for kind in PeerKind:
            self.peers.labels(kind.value).set(0)
            self.lost.labels(kind.value)
        for code in ErrorCode:
            self.errors.labels(code.value)


class Hub:
    def __init__(
        self,
        comm: CommunicationConfig,
        send: Send,
        publish: Send,
        registry: CollectorRegistry,
        log: EventLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.comm = comm
        self._send = send  # raises zmq.ZMQError(EHOSTUNREACH) for a vanished identity
        self._publish = publish
        self.clock = clock
        self.hub_id = uuid.uuid4().hex[:12]
        self.log = log or get_logger("hub")
        self.metrics = HubMetrics(registry)
        self.table = PeerTable()
        #: under CurveZMQ, what each key may register as (None: no keys, no check)
        self.keyring: Keyring | None = None
        self._local = {  # requests of registered peers (peer.register is handled apart)
            PeerHeartbeat.TYPE: self._on_heartbeat,
            PeerDisconnect.TYPE: self._on_disconnect,
            RegistryList.TYPE: self._on_registry_list,
            NodeConfigGet.TYPE: self._on_node_config,
        }
        #: what node.config answers: the central configuration without secrets, and the
        #: ports the event sockets listen on (set by the hub's main)
        self.shared_config: dict[str, Any] = {}
        self.event_ports = (0, 0)

    # ---- frames in --------------------------------------------------------------------

    def on_frames(self, frames: list[bytes], key: str = "") -> None:
        """Handle one message; total: whatever arrives, the hub answers (or drops an
        error, never answering an error with one) and goes on. ``key`` is the sender's
        key name under CurveZMQ (its ZAP User-Id)."""
        identity, payload = frames[0], frames[1:]
        header: Header | None = None
        try:
            try:
                header = decode_header(payload)
            except ProtocolError as exc:
                self._error(identity, peek_header(payload), exc)
                return
            if header.dst == HUB:
                self._on_local(identity, header, payload[1], key)
            else:
                self._route(identity, header, payload)
        except ProtocolError as exc:
            self._error(identity, header, exc)
        except Exception as exc:  # a bug: count it, say so, keep serving
            self.log.exception("message.crashed", type=safe(header.type if header else "?"),
                               error=safe(exc))
            self._error(identity, header, ProtocolError(
                ErrorCode.INTERNAL, "the hub could not handle this message"))

    def _route(self, identity: bytes, header: Header, payload: list[bytes]) -> None:
        sender = self.table.by_identity.get(identity)
        if sender is None:
            raise ProtocolError(ErrorCode.NOT_REGISTERED,
                                "register with the hub before sending (peer.register)")
        if header.src != sender.name:
            raise ProtocolError(ErrorCode.SPOOFED_SOURCE,
                                f"src {header.src!r} is not your registered name {sender.name!r}")
        sender.last_seen = self.clock()
        target = self.table.by_name.get(header.dst)
        if target is None:
            raise ProtocolError(ErrorCode.UNDELIVERABLE, f"no peer named {header.dst!r}",
                                {"dst": header.dst})
        try:
            self._send([target.identity, *payload])
        except zmq.ZMQError as exc:  # EHOSTUNREACH under ROUTER_MANDATORY, or EAGAIN
            raise ProtocolError(ErrorCode.UNDELIVERABLE,
                                f"peer {header.dst!r} cannot take the message: {exc.strerror}",
                                {"dst": header.dst}) from None
        self.metrics.routed.inc()

    def _on_local(self, identity: bytes, header: Header, body_frame: bytes, key: str) -> None:
        if header.type == PeerRegister.TYPE:
            self._on_register(identity, header, decode_body(header, body_frame), key)
            return
        handler = self._local.get(header.type)
        if handler is None:
            if header.type == Error.TYPE:
                self._count_error_to_hub(header, body_frame)
                return
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"the hub does not handle {header.type}")
        body = decode_body(header, body_frame)
        entry = self.table.by_identity.get(identity)
        if entry is None or entry.name != header.src:
            raise ProtocolError(ErrorCode.NOT_REGISTERED,
                                "unknown peer: register first (peer.register)")
        entry.last_seen = self.clock()
        handler(identity, header, body, entry)

    # ---- hub requests -----------------------------------------------------------------

    def _on_register(self, identity: bytes, header: Header, body: Body, key: str) -> None:
        assert isinstance(body, PeerRegister)
        if body.name == HUB:
            raise ProtocolError(ErrorCode.NAME_TAKEN, f"{HUB!r} is the hub's own name")
        if self.comm.token and not hmac.compare_digest(body.token.encode(),
                                                       self.comm.token.encode()):
            self._refuse(body, "token", "the bus token is missing or wrong", key)
            raise ProtocolError(ErrorCode.UNAUTHORIZED,
                                "this hub requires the bus token: set communication.token "
                                "(or use the data directory holding bus.token)")
        body = body.model_copy(update={"token": ""})  # never kept, shown or logged
        if self.keyring is not None:  # CurveZMQ: the key decides what it may register as
            why = self.keyring.grant(key).refusal(body.kind.value, body.name, body.role,
                                                  body.host)
            if why:
                why = f"key {key or '(unnamed)'!r} {why}"
                self._refuse(body, "key", why, key)
                raise ProtocolError(ErrorCode.UNAUTHORIZED, why)
        try:
            entry, replaced = self.table.register(identity, body, self.clock(), key)
        except ProtocolError as exc:
            if exc.code == ErrorCode.NAME_TAKEN:
                self._refuse(body, "name_taken", exc.reason, key)
            raise
        if replaced is not None:
            self.log.info("peer.reconnected", name=body.name, kind=body.kind.value)
        else:
            self.log.info("peer.registered", name=body.name, kind=body.kind.value,
                          role=body.role, pid=body.pid, host=body.host)
        self._update_gauges()
        self._reply(identity, header, PeerRegistered(
            name=body.name, hub_id=self.hub_id,
            heartbeat_interval=self.comm.heartbeat_interval, liveness=self.comm.liveness,
            reclaim=entry.reclaim,
        ))
        self._event(entry, "registered", who=True)

    def _refuse(self, body: PeerRegister, reason: str, detail: str, key: str = "") -> None:
        """Count, log and publish a refused registration (never with its credentials)."""
        self.metrics.refused.labels(reason).inc()
        self.log.warning("peer.refused", name=safe(body.name), kind=body.kind.value,
                         reason=reason, detail=detail, pid=body.pid, host=safe(body.host))
        self._publish_event(peer_topic(body.kind.value, "refused"), PeerEvent(
            name=safe(body.name, 128), kind=body.kind.value, role=safe(body.role),
            state="refused", reason=f"{reason}: {detail}", key=key,
            host=safe(body.host, 128), pid=body.pid, user=safe(body.user, 64)))

    def refused_handshake(self, public_key: str) -> None:
        """A CurveZMQ handshake with a key not on the allow-list (from the ZAP thread,
        via the loop): logged, counted, published."""
        self.metrics.refused.labels("handshake").inc()
        shown = safe(public_key, 12)
        self.log.warning("handshake.refused", key=shown, reason="key not on the allow-list")
        self._publish_event(peer_topic("handshake", "refused"), PeerEvent(
            name=shown, kind="handshake", state="refused",
            reason="CurveZMQ key not on the allow-list"))

    def keys_changed(self, before: Keyring | None, after: Keyring) -> None:
        """The allow-list was re-read: publish which key names came and went."""
        old = set(before.grants) if before else set()
        new = set(after.grants)
        if old == new:
            return
        body = KeysChanged(added=sorted(new - old), removed=sorted(old - new))
        self.log.info("keys.changed", added=body.added, removed=body.removed)
        self._publish_event(KEYS_TOPIC, body)

    def _on_heartbeat(self, identity: bytes, header: Header, body: Body, entry: PeerEntry | None) -> None:
        assert isinstance(body, PeerHeartbeat) and entry is not None
        changed = self.table.heartbeat(entry, body, self.clock())
        self._reply(identity, header, PeerHeartbeat(state=PeerState.IDLE))
        if changed and entry.kind == PeerKind.AGENT:
            self._event(entry, body.state.value)

    def _on_disconnect(self, identity: bytes, header: Header, body: Body, entry: PeerEntry | None) -> None:
        assert isinstance(body, PeerDisconnect) and entry is not None
        self.table.remove(identity)
        self._update_gauges()
        self.log.info("peer.disconnected", name=entry.name, reason=body.reason)
        self._event(entry, "disconnected", body.reason)

    def _on_registry_list(self, identity: bytes, header: Header, body: Body, _: PeerEntry | None) -> None:
        assert isinstance(body, RegistryList)
        now = self.clock()
        peers = [e.to_info(now) for e in self.table.by_name.values()
                 if body.kind is None or e.kind == body.kind]
        peers.sort(key=lambda p: (p.kind.value, p.name))
        self._reply(identity, header, RegistryListReply(hub_id=self.hub_id, hub_pid=os.getpid(), peers=peers))

    def _on_node_config(self, identity: bytes, header: Header, body: Body, entry: PeerEntry | None) -> None:
        assert isinstance(body, NodeConfigGet) and entry is not None
        self.log.info("node.config", peer=entry.name, host=safe(body.host))
        self._reply(identity, header, NodeConfigReply(
            hub_id=self.hub_id, config=self.shared_config, pub_port=self.event_ports[0],
            sub_port=self.event_ports[1]))

    # ---- liveness ---------------------------------------------------------------------

    def check_liveness(self) -> list[str]:
        """Declare peers silent for longer than interval x liveness lost; returns names."""
        budget = self.comm.heartbeat_interval * self.comm.liveness
        lost = []
        for entry in self.table.expired(self.clock(), budget):
            self.table.remove(entry.identity)
            self.metrics.lost.labels(entry.kind.value).inc()
            self.log.warning("peer.lost", name=entry.name, kind=entry.kind.value,
                             running=entry.running)
            self._event(entry, "lost", f"silent for more than {budget:.1f}s")
            lost.append(entry.name)
        if lost:
            self._update_gauges()
        return lost

    # ---- frames out -------------------------------------------------------------------

    def _reply(self, identity: bytes, request: Header, body: Body) -> None:
        header = make_header(body.TYPE, HUB, request.src, corr=request.id)
        try:
            self._send([identity, *encode(header, body)])
        except zmq.ZMQError as exc:
            self.log.warning("reply.undeliverable", dst=request.src, error=exc.strerror)

    def _error(self, identity: bytes, header: Header | None, exc: ProtocolError) -> None:
        self.metrics.errors.labels(exc.code.value).inc()
        if header is not None and header.type == Error.TYPE:
            return  # never answer an error with an error (no ping-pong); counted above
        self.log.warning("bad.input", code=exc.code.value, reason=exc.reason,
                         src=header.src if header else "?")
        dst = header.src if header is not None else "?"
        reply = make_header(Error.TYPE, HUB, dst, corr=header.id if header is not None else "")
        try:
            frames = encode(reply, Error(code=exc.code, reason=exc.reason, details=exc.details))
        except Exception:  # details that still do not encode: send the code and reason only
            frames = encode(reply, Error(code=exc.code, reason=safe(exc.reason)))
        try:
            self._send([identity, *frames])
        except zmq.ZMQError:
            pass  # the sender is already gone; nothing left to tell

    def _count_error_to_hub(self, header: Header, body_frame: bytes) -> None:
        self.metrics.errors.labels("received").inc()
        self.log.warning("error.received", src=header.src)

    def _event(self, entry: PeerEntry, state: str, reason: str = "", who: bool = False) -> None:
        topic = peer_topic(entry.kind.value, state)
        body = PeerEvent(name=entry.name, kind=entry.kind.value, role=entry.info.role,
                         state=state, reason=reason)
        if who:
            i = entry.info
            body.key, body.host, body.pid, body.user = entry.key, i.host, i.pid, i.user
        self._publish_event(topic, body)

    def _publish_event(self, topic: str, body: Body) -> None:
        self._publish(encode_event(topic, make_header(body.TYPE, HUB, "*"), body))
        self.metrics.events.labels(topic).inc()

    def _update_gauges(self) -> None:
        for kind in PeerKind:
            self.metrics.peers.labels(kind.value).set(self.table.count(kind))
