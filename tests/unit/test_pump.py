"""The pump: a handler that raises is counted and logged and the next message is still
handled, also when it passes each message's ZAP User-Id (the hub under CurveZMQ)."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from libs.zmqio import Pump, context, socket


@pytest.mark.timeout(20)
@pytest.mark.parametrize("user_ids", [False, True])
def test_a_raising_handler_does_not_stop_the_pump(tmp_path, user_ids):
    ctx = context()
    server, client = socket(ctx, zmq.ROUTER), socket(ctx, zmq.DEALER)
    endpoint = f"ipc://{tmp_path}/p.sock"
    server.bind(endpoint)
    client.connect(endpoint)
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
