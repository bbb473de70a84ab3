"""CurveZMQ: with communication.curve on, peers holding an allowed key talk to the hub
(requests and events); a key outside the allow-list, or no encryption, gets nothing."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import zmq.auth

from libs import security
from libs.client import BusClient
from libs.config import CommunicationConfig
from libs.events import EventSubscriber
from libs.peer import RequestTimeout
from protocols.peer import RegistryList


@pytest.mark.timeout(60)
def test_curve_allows_listed_keys_only(procs, tmp_path):
    keys = tmp_path / "keys"
    security.init(str(keys), "client")
    security.add(str(keys), "second")
    stranger = tmp_path / "other"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "client")
    (stranger / "hub.key").write_bytes((keys / "hub.key").read_bytes())

    hub = procs.service("services.hub", "--hub", "tcp://127.0.0.1:0", "--pub",
                        "tcp://127.0.0.1:0", "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0",
                        "--set", "communication.curve=true", "--set", f'data_dir="{tmp_path}"',
                        "--set", f'communication.keys_dir="{keys}"')
    ready = procs.ready(hub)
    comm = CommunicationConfig(router_endpoint=ready["router"], pub_endpoint=ready["pub"],
                               sub_endpoint=ready["sub"], heartbeat_interval=0.2)

    async def allowed():
        got = asyncio.Event()
        sub = EventSubscriber(comm.sub(), ["client.registered"],
                              lambda topic, msg: got.set() if msg.body.name == "c2" else None)
        sub.start()
        try:
            async with BusClient(comm, name="c1", connect_timeout=5) as bus:
                reply = await bus.request("hub", RegistryList())
                assert "c1" in {p.name for p in reply.body.peers}
                # the subscription is up once events flow; register until one arrives
                for _ in range(50):
                    security.configure(True, str(keys), "second")
                    async with BusClient(comm, name="c2", connect_timeout=5):
                        pass
                    try:
                        await asyncio.wait_for(got.wait(), 0.2)
                        break
                    except asyncio.TimeoutError:
                        continue
                assert got.is_set()  # events cross the encrypted XSUB/XPUB too
        finally:
            await sub.close()

    async def refused():
        with pytest.raises(RequestTimeout):
            async with BusClient(comm, name="intruder", connect_timeout=1.5):
                pass

    try:
        security.configure(True, str(keys), "client")
        asyncio.run(allowed())
        security.configure(True, str(stranger), "client")  # a key the hub does not list
        asyncio.run(refused())
        # listed afterwards and the hub told (SIGHUP): the same key is let in
        (keys / "authorized" / "stranger.key").write_bytes((stranger / "client.key").read_bytes())
        os.kill(hub.pid, signal.SIGHUP)

        async def admitted():
            for _ in range(20):  # the reload is asynchronous: retry under a deadline
                try:
                    async with BusClient(comm, name="stranger", connect_timeout=0.5):
                        return
                except RequestTimeout:
                    continue
            raise AssertionError("the newly listed key was not admitted")

        asyncio.run(admitted())
        security.configure(False, "", "")  # no encryption at all
        asyncio.run(refused())
    finally:
        security.configure(False, "", "")
