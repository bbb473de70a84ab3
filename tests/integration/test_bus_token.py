"""Without CurveZMQ, the bus token keeps other local users off the bus: a hub that has one
refuses every register without it (counted, logged, published), and never shows it."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import urllib.request

import pytest
import zmq

from libs.client import BusClient
from libs.config import CommunicationConfig, ensure_bus_token, load_config
from libs.events import EventSubscriber
from libs.peer import RegistrationRefused
from protocols import decode, encode, make_header
from protocols.peer import Error, PeerKind, PeerRegister, RegistryList

TOKEN = "t0ken-for-this-test-only-Zq8"


def refused_count(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url + "/metrics", timeout=5).read().decode()
    match = re.search(r'^ccaa_hub_refused_total\{reason="token"\} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


@pytest.mark.timeout(60)
def test_a_hub_with_a_token_refuses_registers_without_it(procs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bus.token").write_text(TOKEN + "\n")
    hub = procs.service("services.hub", "--hub", "tcp://127.0.0.1:0", "--pub",
                        "tcp://127.0.0.1:0", "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0",
                        "--set", f'data_dir="{data}"',
                        "--set", "communication.heartbeat_interval=0.2")
    ready = procs.ready(hub)
    comm = CommunicationConfig(router_endpoint=ready["router"], pub_endpoint=ready["pub"],
                               sub_endpoint=ready["sub"], heartbeat_interval=0.2)
    assert refused_count(ready["metrics"]) == 0

    async def scenario():
        refusals: list[str] = []
        seen, subscribed = asyncio.Event(), asyncio.Event()
        good = comm.model_copy(update={"token": TOKEN})

        def on_event(topic, msg):
            if topic == "client.registered" and msg.body.name == "probe":
                subscribed.set()
            elif topic.endswith(".refused"):
                refusals.append(f"{msg.body.name}: {msg.body.reason}")
                if len(refusals) == 3:
                    seen.set()

        sub = EventSubscriber(comm.sub(), ["client.", "service.refused"], on_event)
        sub.start()
        try:
            while not subscribed.is_set():  # until the subscription is known to be live
                async with BusClient(good, name="probe", connect_timeout=5):
                    pass
                try:
                    await asyncio.wait_for(subscribed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            # a raw register without a token, then with a wrong one: typed refusals
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(comm.router())
            try:
                for token in ("", "wrong"):
                    reg = make_header(PeerRegister.TYPE, "orchestrator", "hub")
                    sock.send_multipart(encode(reg, PeerRegister(
                        name="orchestrator", kind=PeerKind.SERVICE, token=token)))
                    reply = decode(sock.recv_multipart())
                    assert isinstance(reply.body, Error)
                    assert reply.body.code.value == "unauthorized", reply.body
                    assert TOKEN not in reply.body.reason
            finally:
                sock.close(linger=0)
            # a client without the token fails at once with a clear reason (no retrying)
            with pytest.raises(RegistrationRefused, match="bus token"):
                async with BusClient(comm, name="outsider", connect_timeout=10):
                    pass
            await asyncio.wait_for(seen.wait(), 5)
            # the same client with the token is served, and nobody sees the token
            async with BusClient(good, name="insider", connect_timeout=5) as bus:
                reply = await bus.request("hub", RegistryList())
                assert "insider" in {p.name for p in reply.body.peers}
                assert TOKEN not in reply.body.model_dump_json()
        finally:
            await sub.close()
        return refusals

    refusals = asyncio.run(scenario())
    assert sorted(r.split(":")[0] for r in refusals) == ["orchestrator", "orchestrator",
                                                        "outsider"]
    assert all("token" in r for r in refusals)
    assert refused_count(ready["metrics"]) == 3
    log = (procs.log_dir / "hub.log").read_text()
    assert log.count("peer.refused") == 3
    assert TOKEN not in log


def test_the_token_file_is_made_once_private_and_read_by_every_peer(tmp_path):
    config = load_config(overrides={"data_dir": str(tmp_path)})
    assert config.communication.token == ""
    token = ensure_bus_token(config)
    path = tmp_path / "bus.token"
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_bus_token(config) == token  # made once: a second `ccaa up` keeps it
    assert load_config(overrides={"data_dir": str(tmp_path)}).communication.token == token
    # a token given in the configuration wins over the file (remote hosts set it)
    given = load_config(overrides={"data_dir": str(tmp_path),
                                   "communication": {"token": "from-config"}})
    assert given.communication.token == "from-config"
