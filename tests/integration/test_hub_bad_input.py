"""Raw garbage on the hub's port gets typed error replies, and the hub keeps serving."""

from __future__ import annotations

import os
import urllib.request

import msgpack
import pytest
import zmq

from protocols import MAX_MESSAGE_SIZE, decode, encode, make_header
from protocols.peer import Error, PeerKind, PeerRegister, PeerRegistered
from protocols.task import TaskCancel


def raw_dealer(router: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)  # a deadline on every recv
    sock.connect(router)
    return sock


def error_reply(sock: zmq.Socket, frames: list[bytes]):
    sock.send_multipart(frames)
    msg = decode(sock.recv_multipart())
    assert isinstance(msg.body, Error), msg
    return msg


def header(type_: str, **over) -> bytes:
    h = {"v": 1, "type": type_, "id": "req-1", "src": "raw", "dst": "hub", "corr": "", "ts": 0.0}
    h.update(over)
    return msgpack.packb(h)


@pytest.mark.timeout(60)
def test_garbage_gets_error_replies_and_the_hub_keeps_serving(bus):
    sock = raw_dealer(bus.router)
    body = msgpack.packb({})
    try:
        cases = [
            ([b"\xc1garbage"], "decode_error"),
            ([b"\xc1", b"\xc1"], "decode_error"),
            ([msgpack.packb([1, 2, 3]), body], "decode_error"),
            ([header("peer.register"), body, b"extra"], "decode_error"),
            ([header("peer.register", v=99), body], "version_mismatch"),
            ([header("no.such.type"), body], "unknown_type"),
            ([header("peer.register", id=""), body], "validation_error"),
            ([header("peer.register"), msgpack.packb({"name": 5})], "validation_error"),
            ([header("peer.register"), b"\xc1"], "decode_error"),
            ([header("peer.register"), b"x" * (MAX_MESSAGE_SIZE + 1)], "oversize"),
            ([header("task.cancel", dst="orchestrator"), body], "not_registered"),
            ([header("peer.heartbeat"), body], "not_registered"),
        ]
        for frames, code in cases:
            reply = error_reply(sock, frames)
            assert reply.body.code.value == code, (frames[:1], reply.body)
        # replies to a readable header carry its id as corr
        reply = error_reply(sock, [header("no.such.type", id="abc"), body])
        assert reply.header.corr == "abc"

        # the hub still serves: registration works on the same socket
        reg = make_header(PeerRegister.TYPE, "raw", "hub")
        sock.send_multipart(encode(reg, PeerRegister(name="raw", kind=PeerKind.CLIENT,
                                                     pid=os.getpid())))
        msg = decode(sock.recv_multipart())
        assert isinstance(msg.body, PeerRegistered) and msg.header.corr == reg.id

        # and, registered, it gets routing errors: spoofed source, unknown destination
        spoof = make_header(TaskCancel.TYPE, "someone-else", "raw")
        reply = error_reply(sock, encode(spoof, TaskCancel(task_id="t", attempt_id="a")))
        assert reply.body.code.value == "spoofed_source"
        nowhere = make_header(TaskCancel.TYPE, "raw", "nobody")
        reply = error_reply(sock, encode(nowhere, TaskCancel(task_id="t", attempt_id="a")))
        assert reply.body.code.value == "undeliverable" and reply.header.corr == nowhere.id
    finally:
        sock.close(linger=0)

    with urllib.request.urlopen(bus.metrics + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'ccaa_hub_errors_total{code="decode_error"} 5.0' in text
    assert 'ccaa_hub_errors_total{code="oversize"} 1.0' in text
    assert 'ccaa_hub_errors_total{code="undeliverable"} 1.0' in text


@pytest.mark.timeout(30)
def test_unregistered_silent_peer_is_dropped_and_must_reregister(bus):
    """A registered peer that stops heartbeating is declared lost; its next message gets
    not_registered (so it knows to register again) rather than silence."""
    sock = raw_dealer(bus.router)
    try:
        reg = make_header(PeerRegister.TYPE, "quiet", "hub")
        sock.send_multipart(encode(reg, PeerRegister(name="quiet", kind=PeerKind.AGENT,
                                                     pid=os.getpid())))
        assert isinstance(decode(sock.recv_multipart()).body, PeerRegistered)
        # stay silent past the liveness budget: wait on the socket itself with a deadline
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        assert not poller.poll(int(bus.heartbeat * bus.liveness * 1000 + 600))
        reply = error_reply(sock, encode(make_header(TaskCancel.TYPE, "quiet", "quiet"),
                                         TaskCancel(task_id="t", attempt_id="a")))
        assert reply.body.code.value == "not_registered"
    finally:
        sock.close(linger=0)


@pytest.mark.timeout(60)
def test_input_that_once_stopped_the_hub_is_answered_and_huge_frames_are_cut_off(procs, bus):
    """A header whose version is non-UTF-8 bytes, or a 600,000-item list, made the error
    reply unencodable and ended the hub's loop for good; a 200 MB frame was read whole."""
    import psutil

    hub = psutil.Process(next(proc.pid for name, proc in procs.procs if name == "hub"))
    sock = raw_dealer(bus.router)
    try:
        for version in (b"\xff\xfe", list(range(600_000)), {"nested": [b"\x00" * 50]}):
            reply = error_reply(sock, [msgpack.packb({"v": version}), b"\x80"])
            assert reply.body.code.value == "version_mismatch"
            assert len(reply.body.reason) < 200
            assert len(msgpack.packb(reply.body.details)) < 2000  # bounded, whatever came
        before = hub.memory_info().rss
        big = raw_dealer(bus.router)
        try:
            big.send_multipart([header("registry.list"), b"x" * (200 * 1024 * 1024)])
            # ZeroMQ drops that connection unread; the hub answers others meanwhile
            reg = make_header(PeerRegister.TYPE, "after", "hub")
            sock.send_multipart(encode(reg, PeerRegister(name="after", kind=PeerKind.CLIENT,
                                                         pid=os.getpid())))
            assert isinstance(decode(sock.recv_multipart()).body, PeerRegistered)
            assert not big.poll(500)  # no answer for the huge one: its connection was cut
        finally:
            big.close(linger=0)
        assert hub.memory_info().rss - before < 50 * 1024 * 1024
    finally:
        sock.close(linger=0)


@pytest.mark.timeout(60)
def test_a_rogue_cannot_take_a_live_services_name_with_its_pid_and_host(procs, bus):
    """The registry shows every peer's pid and host; claiming them once hijacked a live
    service's name (and its traffic). Only the reclaim key the hub gave the holder does."""
    import asyncio

    from libs.client import BusClient
    from protocols.command import SessionList
    from protocols.peer import RegistryList

    procs.ready(procs.service("services.orchestrator", *bus.args()))

    async def registry():
        async with BusClient(bus.comm()) as client:
            return (await client.request("hub", RegistryList())).body

    real = next(p for p in asyncio.run(registry()).peers if p.name == "orchestrator")
    rogue = raw_dealer(bus.router)
    try:
        reg = make_header(PeerRegister.TYPE, "orchestrator", "hub")
        rogue.send_multipart(encode(reg, PeerRegister(
            name="orchestrator", kind=PeerKind.SERVICE, pid=real.pid, host=real.host)))
        reply = decode(rogue.recv_multipart())
        assert isinstance(reply.body, Error) and reply.body.code.value == "name_taken"
        assert str(real.pid) not in reply.body.reason
    finally:
        rogue.close(linger=0)

    async def ask():
        async with BusClient(bus.comm()) as client:
            return (await client.request("orchestrator", SessionList())).body

    assert asyncio.run(ask()).sessions == []  # the real orchestrator still answers
