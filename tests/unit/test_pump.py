"""The pump: a handler that raises is counted and logged and the next message is still
handled, also when it passes each message's ZAP User-Id (the hub under CurveZMQ)."""

from __future__ import annotations

import asyncio
import select

import pytest
import zmq

from libs.zmqio import Pump, context, socket


def _pair(tmp_path) -> tuple[zmq.Socket, zmq.Socket]:
    ctx = context()
    server, client = socket(ctx, zmq.ROUTER), socket(ctx, zmq.DEALER)
    endpoint = f"ipc://{tmp_path}/p.sock"
    server.bind(endpoint)
    client.connect(endpoint)
    return server, client


@pytest.mark.timeout(20)
@pytest.mark.parametrize("user_ids", [False, True])
def test_a_raising_handler_does_not_stop_the_pump(tmp_path, user_ids):
    server, client = _pair(tmp_path)
    seen: list[tuple] = []
    done = asyncio.Event()

    def handle(frames, *extra):
        seen.append((frames[1], *extra))
        if frames[1] == b"bad":
            raise ValueError("a handler bug")
        done.set()

    async def scenario() -> Pump:
        pump = Pump(server, handle, user_ids=user_ids)
        task = asyncio.ensure_future(pump.run())
        client.send_multipart([b"bad"])
        client.send_multipart([b"good"])
        await asyncio.wait_for(done.wait(), 10)
        pump.close()
        await asyncio.wait_for(task, 5)
        return pump

    try:
        pump = asyncio.run(scenario())
    finally:
        client.close(linger=0)
        server.close(linger=0)
    assert [s[0] for s in seen] == [b"bad", b"good"]
    assert all(len(s) == (2 if user_ids else 1) for s in seen)  # no CurveZMQ: User-Id ""
    assert pump.crashed == 1


def _readable(fd: int, within: float) -> bool:
    return bool(select.select([fd], [], [], within)[0])


@pytest.mark.timeout(20)
def test_a_send_with_nothing_queued_leaves_at_once(tmp_path):
    server, client = _pair(tmp_path)
    client.send_multipart([b"hello"])
    identity = server.recv_multipart()[0]  # (the ROUTER learns the DEALER)

    async def scenario() -> None:
        pump = Pump(server, lambda frames: None)  # its coroutine never runs
        pump.send([identity, b"now"])
        assert pump.pending == 0

    try:
        asyncio.run(scenario())
        assert client.poll(5000) and client.recv_multipart() == [b"now"]
    finally:
        client.close(linger=0)
        server.close(linger=0)


@pytest.mark.timeout(20)
def test_a_message_whose_signal_a_send_took_is_still_received(tmp_path):
    """ZMQ_FD tells of a received message once: a send made outside the pump's coroutine
    may take that signal, and the pump, waiting for the FD, must still hear of it."""
    server, client = _pair(tmp_path)
    client.send_multipart([b"hello"])
    identity = server.recv_multipart()[0]
    got: list[bytes] = []
    came = asyncio.Event()

    def handle(frames):
        got.append(frames[1])
        came.set()

    async def scenario() -> bool:
        pump = Pump(server, handle)
        task = asyncio.ensure_future(pump.run())
        await asyncio.sleep(0)  # wait-ok: the pump reaches its wait for the FD
        await asyncio.sleep(0)  # wait-ok: (its first pass found nothing)
        fd = server.getsockopt(zmq.FD)
        client.send_multipart([b"late"])
        # the loop is held (no await): the FD fires, and the send below takes its signal
        # before the loop can see it
        assert _readable(fd, 5)
        pump.send([identity, b"reply"])
        taken = not _readable(fd, 0)
        await asyncio.wait_for(came.wait(), 5)
        pump.close()
        await asyncio.wait_for(task, 5)
        return taken

    try:
        taken = asyncio.run(scenario())
        assert client.poll(5000) and client.recv_multipart() == [b"reply"]
    finally:
        client.close(linger=0)
        server.close(linger=0)
    assert got == [b"late"]
    assert taken  # the case this test is about did happen
