"""The hub's logic with fakes: a list-appending send/publish, a manual clock, and metrics
read from the injected CollectorRegistry."""

from __future__ import annotations

import errno

import msgpack
import pytest
import zmq
from prometheus_client import CollectorRegistry

from libs.config import CommunicationConfig
from libs.security import Grant, Keyring
from protocols import (
    MAX_MESSAGE_SIZE,
    ErrorCode,
    Message,
    decode,
    decode_event,
    encode,
    make_header,
)
from protocols.base import Body
from protocols.events import PeerEvent
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
from protocols.task import TaskAssign, TaskCancel, TaskSpec
from services.hub.service import Hub

pytestmark = pytest.mark.timeout(30)

INTERVAL = 1.0
LIVENESS = 3


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self):
        self.sent: list[list[bytes]] = []
        self.published: list[list[bytes]] = []
        self.unreachable: set[bytes] = set()
        self.registry = CollectorRegistry()
        self.clock = Clock()
        self.hub = Hub(CommunicationConfig(heartbeat_interval=INTERVAL, liveness=LIVENESS),
                       self._send, self.published.append, self.registry, clock=self.clock)

    def _send(self, frames: list[bytes]) -> None:
        if frames[0] in self.unreachable:
            raise zmq.ZMQError(errno.EHOSTUNREACH)
        self.sent.append(list(frames))

    # -- driving --
    def deliver(self, identity: bytes, payload: list[bytes]) -> list[list[bytes]]:
        """Feed one message; return what the hub sent in response to it."""
        before = len(self.sent)
        self.hub.on_frames([identity, *payload])
        return self.sent[before:]

    def message(self, identity: bytes, src: str, dst: str, body: Body, id_: str = ""):
        header = make_header(body.TYPE, src, dst, id_=id_)
        return header, self.deliver(identity, encode(header, body))

    def register(self, identity: bytes, name: str, kind: PeerKind = PeerKind.AGENT,
                 pid: int = 100, host: str = "box", role: str = "worker",
                 reclaim: str = "") -> Message:
        _, out = self.message(identity, name, "hub", PeerRegister(
            name=name, kind=kind, role=role, capabilities=["py"], capacity=2, pid=pid,
            host=host, reclaim=reclaim))
        assert len(out) == 1 and out[0][0] == identity
        return decode(out[0][1:])

    def events(self) -> list[tuple[str, Message]]:
        return [decode_event(f) for f in self.published]

    def metric(self, name: str, **labels) -> float:
        value = self.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def _reply(out: list[list[bytes]], identity: bytes) -> Message:
    assert len(out) == 1, out
    assert out[0][0] == identity
    return decode(out[0][1:])


def _error(out, identity: bytes, code: ErrorCode) -> Message:
    msg = _reply(out, identity)
    assert isinstance(msg.body, Error), msg.body
    assert msg.body.code == code, msg.body
    assert msg.header.src == "hub"
    return msg


def _spec() -> TaskSpec:
    return TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt="echo hi")


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---- registration -----------------------------------------------------------------------


def test_register_replies_registered_and_publishes_agent_registered(h):
    header, out = h.message(b"id-a", "agent-1", "hub", PeerRegister(
        name="agent-1", kind=PeerKind.AGENT, role="worker", pid=1, host="box"))
    reply = _reply(out, b"id-a")
    assert isinstance(reply.body, PeerRegistered)
    assert reply.header.corr == header.id
    assert reply.header.dst == "agent-1" and reply.header.src == "hub"
    assert reply.body == PeerRegistered(name="agent-1", hub_id=h.hub.hub_id,
                                        heartbeat_interval=INTERVAL, liveness=LIVENESS,
                                        reclaim=h.hub.table.by_name["agent-1"].reclaim)
    [(topic, event)] = h.events()
    assert topic == "agent.registered"
    assert event.body == PeerEvent(name="agent-1", kind="agent", role="worker",
                                   state="registered", host="box", pid=1)
    assert h.metric("ccaa_hub_peers", kind="agent") == 1
    assert h.metric("ccaa_hub_events_published_total", topic="agent.registered") == 1


def test_register_a_service_publishes_service_registered(h):
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE, role="")
    assert [t for t, _ in h.events()] == ["service.registered"]
    assert h.metric("ccaa_hub_peers", kind="service") == 1
    assert h.metric("ccaa_hub_peers", kind="agent") == 0


def test_register_as_hub_is_name_taken(h):
    _, out = h.message(b"id-x", "hub", "hub", PeerRegister(name="hub", kind=PeerKind.SERVICE))
    _error(out, b"id-x", ErrorCode.NAME_TAKEN)
    assert h.published == []


def test_name_taken_by_a_different_process(h):
    h.register(b"id-1", "agent-1", pid=100, host="box")
    header, out = h.message(b"id-2", "agent-1", "hub", PeerRegister(
        name="agent-1", kind=PeerKind.AGENT, pid=200, host="box"))
    err = _error(out, b"id-2", ErrorCode.NAME_TAKEN)
    assert err.header.corr == header.id
    assert h.metric("ccaa_hub_errors_total", code="name_taken") == 1
    # the original holder still gets the traffic
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    _, out = h.message(b"id-o", "orchestrator", "agent-1", TaskAssign(task=_spec()))
    assert out[0][0] == b"id-1"


def test_a_claimed_pid_and_host_do_not_take_a_live_name_and_errors_reveal_neither(h):
    """Anyone can claim the holder's pid and host (status and errors once showed them):
    only the reclaim key the hub gave the holder takes the name over."""
    first = h.register(b"id-1", "agent-1", pid=4242, host="secret-box")
    for reclaim in ("", "0" * 32):
        _, out = h.message(b"id-2", "agent-1", "hub", PeerRegister(
            name="agent-1", kind=PeerKind.AGENT, pid=4242, host="secret-box", reclaim=reclaim))
        err = _error(out, b"id-2", ErrorCode.NAME_TAKEN)
        assert "4242" not in err.body.reason and "secret-box" not in err.body.reason
    assert h.hub.table.by_name["agent-1"].identity == b"id-1"
    assert len(first.body.reclaim) == 32


def test_same_peer_reregistering_on_a_new_socket_with_its_key_replaces_the_old_entry(h):
    first = h.register(b"id-old", "agent-1", pid=100, host="box")
    reply = h.register(b"id-new", "agent-1", pid=999, host="elsewhere",
                       reclaim=first.body.reclaim)
    assert isinstance(reply.body, PeerRegistered)
    assert reply.body.reclaim == first.body.reclaim  # the same peer keeps its key
    assert b"id-old" not in h.hub.table.by_identity
    assert h.hub.table.by_name["agent-1"].identity == b"id-new"
    assert h.metric("ccaa_hub_peers", kind="agent") == 1
    # traffic for the name goes to the new socket; the old socket is no longer registered
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    _, out = h.message(b"id-o", "orchestrator", "agent-1", TaskAssign(task=_spec()))
    assert out[0][0] == b"id-new"
    _, out = h.message(b"id-old", "agent-1", "orchestrator", TaskCancel(task_id="t",
                                                                       attempt_id="a"))
    _error(out, b"id-old", ErrorCode.NOT_REGISTERED)


def test_same_socket_reregistering_under_a_new_name_drops_the_old_name(h):
    h.register(b"id-1", "agent-1")
    h.register(b"id-1", "agent-2")
    assert set(h.hub.table.by_name) == {"agent-2"}
    assert h.metric("ccaa_hub_peers", kind="agent") == 1


def test_register_with_an_invalid_body_is_a_validation_error_with_corr(h):
    header = make_header("peer.register", "agent-1", "hub")
    frames = [msgpack.packb(header.model_dump()),
              msgpack.packb({"name": "agent-1", "kind": "agent", "capacity": -5})]
    out = h.deliver(b"id-a", frames)
    err = _error(out, b"id-a", ErrorCode.VALIDATION_ERROR)
    assert err.header.corr == header.id
    assert "capacity" in {e["loc"] for e in err.body.details["errors"]}
    assert h.hub.table.by_name == {}


# ---- routing ----------------------------------------------------------------------------


def test_routing_forwards_the_untouched_payload_to_the_target_identity(h):
    h.register(b"id-d", "distributor", kind=PeerKind.SERVICE)
    h.register(b"id-a", "agent-1")
    header = make_header("task.assign", "distributor", "agent-1")
    payload = encode(header, TaskAssign(task=_spec()))
    out = h.deliver(b"id-d", payload)
    assert out == [[b"id-a", payload[0], payload[1]]]
    assert h.metric("ccaa_hub_routed_total") == 1


def test_routing_forwards_a_body_the_hub_could_not_decode(h):
    # the hub routes on the header alone
    h.register(b"id-d", "distributor", kind=PeerKind.SERVICE)
    h.register(b"id-a", "agent-1")
    header_frame = encode(make_header("task.assign", "distributor", "agent-1"),
                          TaskAssign(task=_spec()))[0]
    out = h.deliver(b"id-d", [header_frame, b"opaque body bytes"])
    assert out == [[b"id-a", header_frame, b"opaque body bytes"]]


def test_unregistered_sender_gets_not_registered_with_corr(h):
    h.register(b"id-a", "agent-1")
    header, out = h.message(b"id-stranger", "stranger", "agent-1", TaskCancel(
        task_id="t", attempt_id="a"), id_="req-123")
    err = _error(out, b"id-stranger", ErrorCode.NOT_REGISTERED)
    assert err.header.corr == "req-123"
    assert err.header.dst == "stranger"
    assert h.metric("ccaa_hub_errors_total", code="not_registered") == 1
    assert h.metric("ccaa_hub_routed_total") == 0


def test_spoofed_source(h):
    h.register(b"id-a", "agent-1")
    h.register(b"id-b", "agent-2")
    header, out = h.message(b"id-a", "agent-2", "agent-2", TaskCancel(task_id="t",
                                                                      attempt_id="a"))
    err = _error(out, b"id-a", ErrorCode.SPOOFED_SOURCE)
    assert err.header.corr == header.id
    assert "agent-1" in err.body.reason
    assert h.metric("ccaa_hub_errors_total", code="spoofed_source") == 1


def test_unknown_destination_is_undeliverable(h):
    h.register(b"id-a", "agent-1")
    header, out = h.message(b"id-a", "agent-1", "nobody", TaskCancel(task_id="t",
                                                                     attempt_id="a"))
    err = _error(out, b"id-a", ErrorCode.UNDELIVERABLE)
    assert err.header.corr == header.id
    assert err.body.details == {"dst": "nobody"}
    assert h.metric("ccaa_hub_errors_total", code="undeliverable") == 1


def test_send_failure_to_the_target_is_undeliverable_for_the_sender(h):
    h.register(b"id-a", "agent-1")
    h.register(b"id-d", "distributor", kind=PeerKind.SERVICE)
    h.unreachable.add(b"id-a")
    header, out = h.message(b"id-d", "distributor", "agent-1", TaskAssign(task=_spec()))
    err = _error(out, b"id-d", ErrorCode.UNDELIVERABLE)
    assert err.header.corr == header.id
    assert err.body.details == {"dst": "agent-1"}
    assert h.metric("ccaa_hub_routed_total") == 0


def test_error_reply_to_a_vanished_sender_is_dropped_quietly(h):
    h.unreachable.add(b"id-gone")
    _, out = h.message(b"id-gone", "ghost", "agent-1", TaskCancel(task_id="t", attempt_id="a"))
    assert out == []
    assert h.metric("ccaa_hub_errors_total", code="not_registered") == 1


def test_hub_does_not_handle_other_types(h):
    h.register(b"id-a", "agent-1")
    _, out = h.message(b"id-a", "agent-1", "hub", TaskCancel(task_id="t", attempt_id="a"))
    _error(out, b"id-a", ErrorCode.UNSUPPORTED)


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    [b"garbage"],
    [b"\xc1\xc1", b"\xc1"],
    [msgpack.packb([1, 2, 3]), msgpack.packb({})],
    [],
])
def test_garbage_frames_get_a_decode_error_reply(h, payload):
    out = h.deliver(b"id-g", payload)
    err = _error(out, b"id-g", ErrorCode.DECODE_ERROR)
    assert err.header.corr == ""
    assert h.metric("ccaa_hub_errors_total", code="decode_error") == 1


def test_wrong_frame_count_with_a_readable_header_answers_that_request(h):
    header = make_header("peer.heartbeat", "agent-1", "hub", id_="req-9")
    frames = encode(header, PeerHeartbeat())
    out = h.deliver(b"id-a", [frames[0]])
    err = _error(out, b"id-a", ErrorCode.DECODE_ERROR)
    assert err.header.corr == "req-9" and err.header.dst == "agent-1"


def test_version_mismatch_and_unknown_type_replies(h):
    raw = make_header("ack", "agent-1", "agent-2", id_="r1").model_dump()
    raw["v"] = 2
    out = h.deliver(b"id-a", [msgpack.packb(raw), msgpack.packb({})])
    err = _error(out, b"id-a", ErrorCode.VERSION_MISMATCH)
    assert err.header.corr == "r1"
    raw["v"], raw["type"] = 1, "no.such.type"
    out = h.deliver(b"id-a", [msgpack.packb(raw), msgpack.packb({})])
    _error(out, b"id-a", ErrorCode.UNKNOWN_TYPE)


def test_oversize_message_gets_oversize_with_corr(h):
    header = make_header("ack", "agent-1", "agent-2", id_="big-1")
    out = h.deliver(b"id-a", [msgpack.packb(header.model_dump()), b"\x00" * MAX_MESSAGE_SIZE])
    err = _error(out, b"id-a", ErrorCode.OVERSIZE)
    assert err.header.corr == "big-1"
    assert h.metric("ccaa_hub_errors_total", code="oversize") == 1


def test_never_replies_an_error_to_an_error(h):
    # routed error from an unregistered sender to an unknown destination
    _, out = h.message(b"id-x", "x", "nobody", Error(code=ErrorCode.BUSY, reason="r"))
    assert out == []
    assert h.metric("ccaa_hub_errors_total", code="not_registered") == 1
    # a registered sender's error to an unknown destination
    h.register(b"id-a", "agent-1")
    _, out = h.message(b"id-a", "agent-1", "nobody", Error(code=ErrorCode.BUSY, reason="r"))
    assert out == []
    assert h.metric("ccaa_hub_errors_total", code="undeliverable") == 1
    # an error with an invalid header version, and one with a broken body frame count
    raw = make_header("error", "agent-1", "agent-2").model_dump()
    raw["v"] = 7
    assert h.deliver(b"id-a", [msgpack.packb(raw), msgpack.packb({})]) == []
    assert h.deliver(b"id-a", [msgpack.packb(make_header("error", "a", "b").model_dump())]) == []
    # an error sent to the hub itself is counted, not answered
    _, out = h.message(b"id-a", "agent-1", "hub", Error(code=ErrorCode.BUSY, reason="r"))
    assert out == []
    assert h.metric("ccaa_hub_errors_total", code="received") == 1


# ---- heartbeats and liveness ------------------------------------------------------------


def test_heartbeat_is_answered_and_agent_state_changes_are_published(h):
    h.register(b"id-a", "agent-1")
    h.published.clear()
    header, out = h.message(b"id-a", "agent-1", "hub", PeerHeartbeat(
        state=PeerState.BUSY, load=1, running=["t1"]))
    reply = _reply(out, b"id-a")
    assert isinstance(reply.body, PeerHeartbeat) and reply.header.corr == header.id
    [(topic, event)] = h.events()
    assert topic == "agent.busy"
    assert event.body.state == "busy" and event.body.name == "agent-1"
    entry = h.hub.table.by_name["agent-1"]
    assert (entry.state, entry.load, entry.running) == (PeerState.BUSY, 1, ["t1"])
    # same state again: answered, nothing published
    h.published.clear()
    _, out = h.message(b"id-a", "agent-1", "hub", PeerHeartbeat(state=PeerState.BUSY, load=2))
    assert len(out) == 1 and h.published == []
    _, out = h.message(b"id-a", "agent-1", "hub", PeerHeartbeat(state=PeerState.IDLE))
    assert [t for t, _ in h.events()] == ["agent.idle"]


def test_service_heartbeat_state_changes_are_not_published(h):
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    h.published.clear()
    _, out = h.message(b"id-o", "orchestrator", "hub", PeerHeartbeat(state=PeerState.BUSY))
    assert len(out) == 1 and h.published == []


def test_heartbeat_from_an_unregistered_peer_is_not_registered(h):
    header, out = h.message(b"id-a", "agent-1", "hub", PeerHeartbeat())
    err = _error(out, b"id-a", ErrorCode.NOT_REGISTERED)
    assert err.header.corr == header.id
    # registered socket claiming another name
    h.register(b"id-a", "agent-1")
    _, out = h.message(b"id-a", "agent-2", "hub", PeerHeartbeat())
    _error(out, b"id-a", ErrorCode.NOT_REGISTERED)


def test_silent_peer_is_lost_after_interval_times_liveness(h):
    h.register(b"id-a", "agent-1")
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    h.published.clear()
    budget = INTERVAL * LIVENESS
    h.clock.now += budget  # exactly the budget: still alive
    assert h.hub.check_liveness() == []
    h.clock.now += 0.01
    assert sorted(h.hub.check_liveness()) == ["agent-1", "orchestrator"]
    topics = {t: e for t, e in h.events()}
    assert set(topics) == {"agent.lost", "service.lost"}
    assert topics["agent.lost"].body.name == "agent-1"
    assert topics["agent.lost"].body.state == "lost"
    assert topics["agent.lost"].body.reason
    assert h.hub.table.by_name == {} and h.hub.table.by_identity == {}
    assert h.metric("ccaa_hub_peers_lost_total", kind="agent") == 1
    assert h.metric("ccaa_hub_peers_lost_total", kind="service") == 1
    assert h.metric("ccaa_hub_peers", kind="agent") == 0
    # the lost peer's next message says register again
    _, out = h.message(b"id-a", "agent-1", "hub", PeerHeartbeat())
    _error(out, b"id-a", ErrorCode.NOT_REGISTERED)
    # and nothing is lost twice
    h.clock.now += 100
    assert h.hub.check_liveness() == []


def test_heartbeats_and_routed_traffic_keep_a_peer_alive(h):
    h.register(b"id-a", "agent-1")
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    for _ in range(5):
        h.clock.now += 2.5
        h.message(b"id-a", "agent-1", "hub", PeerHeartbeat())
        h.message(b"id-o", "orchestrator", "agent-1", TaskCancel(task_id="t", attempt_id="a"))
        assert h.hub.check_liveness() == []
    h.clock.now += 2.5
    h.message(b"id-a", "agent-1", "hub", PeerHeartbeat())
    h.clock.now += 1.0  # orchestrator silent for 3.5 s now
    assert h.hub.check_liveness() == ["orchestrator"]


def test_disconnect_removes_the_peer_and_publishes(h):
    h.register(b"id-a", "agent-1")
    h.published.clear()
    _, out = h.message(b"id-a", "agent-1", "hub", PeerDisconnect(reason="shutdown"))
    assert out == []
    [(topic, event)] = h.events()
    assert topic == "agent.disconnected" and event.body.reason == "shutdown"
    assert h.hub.table.by_name == {}
    assert h.metric("ccaa_hub_peers", kind="agent") == 0


# ---- registry queries -------------------------------------------------------------------


def test_registry_list_filters_by_kind(h):
    h.register(b"id-b", "agent-b")
    h.register(b"id-a", "agent-a")
    h.register(b"id-o", "orchestrator", kind=PeerKind.SERVICE)
    h.register(b"id-c", "cli-1", kind=PeerKind.CLIENT)
    h.clock.now += 0.5
    header, out = h.message(b"id-o", "orchestrator", "hub", RegistryList(kind=PeerKind.AGENT))
    reply = _reply(out, b"id-o")
    assert isinstance(reply.body, RegistryListReply) and reply.header.corr == header.id
    assert reply.body.hub_id == h.hub.hub_id
    assert [p.name for p in reply.body.peers] == ["agent-a", "agent-b"]
    a = reply.body.peers[0]
    assert (a.kind, a.role, a.capabilities, a.capacity, a.pid, a.host) == (
        PeerKind.AGENT, "worker", ["py"], 2, 100, "box")
    assert a.last_seen_ago == pytest.approx(0.5)
    _, out = h.message(b"id-o", "orchestrator", "hub", RegistryList())
    names = [(p.kind.value, p.name) for p in _reply(out, b"id-o").body.peers]
    assert names == [("agent", "agent-a"), ("agent", "agent-b"), ("client", "cli-1"),
                     ("service", "orchestrator")]
    _, out = h.message(b"id-o", "orchestrator", "hub", RegistryList(kind=PeerKind.SERVICE))
    assert [p.name for p in _reply(out, b"id-o").body.peers] == ["orchestrator"]


def test_under_curve_the_reclaim_key_alone_does_not_move_a_name_to_another_key(h):
    """A leaked reclaim key is not enough: the name stays with the CurveZMQ key it was
    registered with."""
    h.hub.keyring = Keyring(grants={"agents": Grant(kind="agent"),
                                    "rack-b": Grant(kind="agent")})
    body = PeerRegister(name="agent-1", kind=PeerKind.AGENT, role="worker")
    h.hub.on_frames([b"id-1", *encode(make_header(body.TYPE, "agent-1", "hub"), body)],
                    "agents")
    first = decode(h.sent[-1][1:])
    assert isinstance(first.body, PeerRegistered)
    stolen = body.model_copy(update={"reclaim": first.body.reclaim})
    h.hub.on_frames([b"id-2", *encode(make_header(body.TYPE, "agent-1", "hub"), stolen)],
                    "rack-b")
    assert decode(h.sent[-1][1:]).body.code == ErrorCode.NAME_TAKEN
    assert h.hub.table.by_name["agent-1"].identity == b"id-1"
    # the same key with its reclaim key takes it back on a new socket
    h.hub.on_frames([b"id-3", *encode(make_header(body.TYPE, "agent-1", "hub"), stolen)],
                    "agents")
    assert isinstance(decode(h.sent[-1][1:]).body, PeerRegistered)
    assert h.hub.table.by_name["agent-1"].identity == b"id-3"
    assert h.metric("ccaa_hub_refused_total", reason="name_taken") == 1


def test_a_controllers_host_stats_reach_the_registry_and_a_bare_heartbeat_keeps_them(h):
    h.register(b"id-c", "controller@h1", kind=PeerKind.SERVICE, role="")
    stats = {"cores": 8.0, "memory_mb": 32000.0, "available_mb": 20000.0, "load1": 1.5}
    h.message(b"id-c", "controller@h1", "hub", PeerHeartbeat(host_stats=stats))
    h.message(b"id-c", "controller@h1", "hub", PeerHeartbeat())
    _, out = h.message(b"id-c", "controller@h1", "hub", RegistryList())
    [info] = decode(out[0][1:]).body.peers
    assert info.host_stats == stats and info.host == "box"


def test_a_controller_key_may_register_any_hosts_controller_but_nothing_else():
    grant = Grant(kind="service", names=["controller@*"])
    assert grant.refusal("service", "controller@h1", "", "h1") == ""
    assert "not as 'orchestrator'" in grant.refusal("service", "orchestrator", "", "h1")
    assert "not as 'controller'" in grant.refusal("service", "controller", "", "h1")
