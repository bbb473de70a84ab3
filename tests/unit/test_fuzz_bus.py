"""Fuzzing the bus: raw frames, msgpack values of every type, valid headers with invalid
bodies and oversize frames, against the hub's logic and against a service's message loop
(a real Peer with the orchestrator's handlers). Every message gets a decodable reply or a
documented drop (an error is never answered with an error), nothing raises, replies stay
small, and real work still succeeds afterwards. Seeded with inputs that once stopped the hub."""

from __future__ import annotations

import asyncio
import os

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from libs.config import CommunicationConfig, SystemConfig
from libs.peer import Peer
from protocols import MAX_MESSAGE_SIZE, decode, encode, make_header
from protocols.command import CommandSubmit, CommandType, SessionCreate, SessionCreated
from protocols.header import PROTOCOL_VERSION
from protocols.peer import Error, PeerKind, PeerRegister, PeerRegistered
from protocols.registry import MESSAGE_TYPES
from services.hub.service import Hub
from services.orchestrator.service import Orchestrator
from services.orchestrator.store import Store

pytestmark = pytest.mark.timeout(120)

#: a reply may quote its request, never grow with it
MAX_REPLY = 8 * 1024

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=10) | st.binary(max_size=10), inner, max_size=6),
    max_leaves=30)
types = st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=70)
names = st.sampled_from(["hub", "orchestrator", "agent-1", "fuzz"]) | st.text(max_size=140)
headers = st.fixed_dictionaries(
    {"v": st.just(PROTOCOL_VERSION) | values, "type": types, "id": st.text(max_size=70),
     "src": names, "dst": names, "corr": st.text(max_size=70),
     "ts": st.floats(allow_nan=False) | values},
    optional={"extra": values})


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


frames_strategy = st.one_of(
    st.lists(st.binary(max_size=64), min_size=0, max_size=4),  # raw garbage
    st.tuples(values, values).map(lambda hv: [pack(hv[0]), pack(hv[1])]),
    st.tuples(headers, values).map(lambda hv: [pack(hv[0]), pack(hv[1])]),  # bad bodies
    st.tuples(headers, st.dictionaries(st.text(max_size=12), values, max_size=8))
    .map(lambda hv: [pack(hv[0]), pack(hv[1])]),
    st.tuples(headers, st.binary(max_size=64)).map(lambda hb: [pack(hb[0]), hb[1]]),
)

SEEDS = [
    [pack({"v": b"\xff\xfe"}), b"\x80"],
    [pack({"v": list(range(600_000))}), b"\x80"],
    [pack({"v": {"nested": [b"\x00" * 64] * 20}}), b"\x80"],
    [pack({"v": PROTOCOL_VERSION, "type": "peer.register", "id": "i", "src": "s", "dst": "hub",
           "corr": "", "ts": 0.0}), b"x" * (MAX_MESSAGE_SIZE + 1)],
    [pack({"v": PROTOCOL_VERSION, "type": "peer.register", "id": "i", "src": "s", "dst": "hub",
           "corr": "", "ts": 0.0}), pack({"name": b"\xff" * 100, "kind": 2**64 - 1})],
]

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_replies(replies: list[list[bytes]], request: list[bytes]) -> None:
    assert len(replies) <= 1, replies
    for frames in replies:
        assert sum(len(f) for f in frames) < MAX_REPLY
        decode(frames)  # a well-formed message of a known type


# ---- the hub ------------------------------------------------------------------------------


class HubUnderTest:
    def __init__(self):
        self.sent: list[list[bytes]] = []
        self.hub = Hub(CommunicationConfig(), send=self.sent.append, publish=lambda f: None,
                       registry=CollectorRegistry())

    def feed(self, frames: list[bytes], identity: bytes = b"fuzzer") -> list[list[bytes]]:
        self.sent.clear()
        self.hub.on_frames([identity, *frames])  # must never raise
        return [f[1:] for f in self.sent]


HUB = HubUnderTest()


@SETTINGS
@given(frames_strategy)
@example(SEEDS[0]).via("once stopped the hub")
@example(SEEDS[1]).via("once stopped the hub")
@example(SEEDS[2])
@example(SEEDS[3])
@example(SEEDS[4])
def test_the_hub_answers_any_frames_and_never_raises(frames):
    replies = HUB.feed(frames)
    check_replies(replies, frames)
    for reply in replies:
        msg = decode(reply)
        if isinstance(msg.body, Error):
            assert msg.body.reason.isprintable()


def test_the_hub_still_registers_peers_after_the_fuzzing():
    for frames in SEEDS:
        HUB.feed(frames)
    reg = make_header(PeerRegister.TYPE, "after", "hub")
    [reply] = HUB.feed(encode(reg, PeerRegister(name="after", kind=PeerKind.CLIENT, pid=1)),
                       identity=b"after")
    assert isinstance(decode(reply).body, PeerRegistered)


# ---- a service's loop: a real Peer with the orchestrator's handlers ---------------------------


class FakePump:
    def __init__(self):
        self.sent: list[list[bytes]] = []

    def send(self, frames: list[bytes]) -> None:
        self.sent.append(frames)


class FakeEvents:
    def publish(self, topic, body) -> None:
        pass


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    loop = asyncio.new_event_loop()
    tmp = tmp_path_factory.mktemp("fuzz")
    config = SystemConfig()
    config.orchestrator.isolate_worktrees = False
    config.data_dir = str(tmp)
    store = Store(str(tmp / "state.db"))

    async def build():
        peer = Peer(name="orchestrator", kind=PeerKind.SERVICE,
                    comm=CommunicationConfig(message_timeout=0.2), registry=CollectorRegistry())
        orch = Orchestrator(config, store, peer, FakeEvents(), CollectorRegistry())
        for type_, handler in orch.handlers.items():
            peer.on(type_, handler)
        peer._pump = FakePump()  # what the loop sends, without a socket
        return peer

    peer = loop.run_until_complete(build())
    yield loop, peer, tmp
    loop.close()
    store.close()


def feed_service(loop, peer, frames: list[bytes]) -> list[list[bytes]]:
    peer._pump.sent.clear()

    async def go():
        peer._on_frames(frames)  # must never raise
        while peer._tasks:  # the handlers it spawned
            await asyncio.gather(*list(peer._tasks), return_exceptions=True)

    loop.run_until_complete(go())
    return list(peer._pump.sent)


@SETTINGS
@given(frames_strategy)
@example(SEEDS[0])
@example(SEEDS[1])
@example(SEEDS[4])
def test_a_service_loop_answers_any_frames_and_never_raises(service, frames):
    loop, peer, _ = service
    check_replies(feed_service(loop, peer, frames), frames)


def test_real_work_still_succeeds_after_the_fuzzing(service):
    loop, peer, tmp = service
    for frames in SEEDS:
        feed_service(loop, peer, frames)
    create = SessionCreate(session_id="after-fuzz", type=CommandType.RUN,
                           command=CommandSubmit(text="true", repo=str(tmp)))
    sent = feed_service(loop, peer, encode(make_header(SessionCreate.TYPE, "commands",
                                                       "orchestrator"), create))
    bodies = [decode(frames).body for frames in sent]
    assert SessionCreated(session_id="after-fuzz") in bodies  # and its task went to be queued
    assert any(b.TYPE == "task.enqueue" for b in bodies)
    assert os.path.exists(tmp / "state.db")
