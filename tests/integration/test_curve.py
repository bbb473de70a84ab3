"""CurveZMQ: with communication.curve on, peers holding an allowed key talk to the hub
(requests and events); a key outside the allow-list, or no encryption, gets nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import pytest
import zmq.auth

from libs import security
from libs.client import BusClient
from libs.config import CommunicationConfig
from libs.events import EventSubscriber
from libs.peer import RequestTimeout
from protocols import decode, encode, make_header
from protocols.peer import Error, PeerKind, PeerRegister, PeerRegistered, RegistryList


@pytest.mark.timeout(60)
def test_curve_allows_listed_keys_only(procs, tmp_path):
    keys = tmp_path / "keys"
    security.init(str(keys), "client")
    security.add(str(keys), "second")
    stranger = tmp_path / "other"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "client")
    (stranger / "hub.key").write_bytes((keys / "hub.key").read_bytes())
    # keys made by ccaa are private from the first byte; one others can read is refused
    for made in keys.glob("*.key_secret"):
        assert made.stat().st_mode & 0o077 == 0, made
    assert (keys / "client.key").stat().st_mode & 0o777 == 0o644
    (stranger / "client.key_secret").chmod(0o644)
    with pytest.raises(security.KeyError_, match=r"readable by others \(mode 0644\); run `chmod 600"):
        security.configure(True, str(stranger), "client")
    (stranger / "client.key_secret").chmod(0o600)

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
        hub_log = (procs.log_dir / "hub.log").read_text()
        assert '"keys.changed"' in hub_log and '"stranger"' in hub_log  # published, audited
        security.configure(False, "", "")  # no encryption at all
        asyncio.run(refused())
    finally:
        security.configure(False, "", "")


def curve_hub(procs, tmp_path, keys):
    hub = procs.service("services.hub", "--hub", "tcp://127.0.0.1:0", "--pub",
                        "tcp://127.0.0.1:0", "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0",
                        "--set", "communication.curve=true", "--set", f'data_dir="{tmp_path}"',
                        "--set", f'communication.keys_dir="{keys}"', name="curve-hub")
    return hub, procs.ready(hub)


def register_with(router: str, keys, key: str, **fields):
    """A raw register over CurveZMQ with the keypair ``key``; returns the reply's body."""
    server, _ = zmq.auth.load_certificate(str(keys / "hub.key"))
    public, secret = zmq.auth.load_certificate(str(keys / f"{key}.key_secret"))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, public, secret
    sock.connect(router)
    try:
        body = PeerRegister(**fields)
        sock.send_multipart(encode(make_header(PeerRegister.TYPE, body.name, "hub"), body))
        return decode(sock.recv_multipart()).body
    finally:
        sock.close(linger=0)


def metric(url: str, name: str, **labels) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{want} not in the hub's metrics")


@pytest.mark.timeout(60)
def test_each_key_registers_only_as_what_it_was_made_for(procs, tmp_path):
    keys = tmp_path / "keys"
    security.init(str(keys))
    security.add(str(keys), "rack-a", security.Grant(kind="agent", roles=["worker"],
                                                     hosts=["host-a"]))
    hub, ready = curve_hub(procs, tmp_path, keys)
    router = ready["router"]
    service = dict(kind=PeerKind.SERVICE)
    cases = [  # (key, registration, refused?)
        ("client", dict(name="orchestrator", **service), "may register only as a client"),
        ("distributor", dict(name="orchestrator", **service),
         "may register only as service distributor"),
        ("orchestrator", dict(name="orchestrator", **service), ""),
        ("client", dict(name="cli-1", kind=PeerKind.CLIENT), ""),
        ("agents", dict(name="w-1", kind=PeerKind.AGENT, role="worker"), ""),
        ("agents", dict(name="svc", **service), "not as a service"),
        ("rack-a", dict(name="w-2", kind=PeerKind.AGENT, role="worker", host="host-a"), ""),
        ("rack-a", dict(name="m-1", kind=PeerKind.AGENT, role="manager", host="host-a"),
         "not with role 'manager'"),
        ("rack-a", dict(name="w-3", kind=PeerKind.AGENT, role="worker", host="host-b"),
         "not on host 'host-b'"),
        ("hub", dict(name="reporter", **service), "may register only as a client"),
    ]
    for key, fields, refused in cases:
        reply = register_with(router, keys, key, **fields)
        if refused:
            assert isinstance(reply, Error) and reply.code.value == "unauthorized", (key, reply)
            assert refused in reply.reason and f"key {key!r}" in reply.reason, reply.reason
        else:
            assert isinstance(reply, PeerRegistered), (key, fields, reply)
    assert metric(ready["metrics"], "ccaa_hub_refused_total", reason="key") == 6
    # a live name cannot be re-registered from another key, reclaim key or not
    # (the holder's socket closed without a disconnect, so its entry is still live)
    taken = register_with(router, keys, "agents", name="w-1", kind=PeerKind.AGENT,
                          role="worker")
    assert isinstance(taken, Error) and taken.code.value == "name_taken", taken
    log = (procs.log_dir / "curve-hub.log").read_text()
    assert log.count('"peer.refused"') == 6 + 1, log[-2000:]
    # a handshake with a key off the allow-list: refused, logged, counted
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(str(stranger), "x")
    (stranger / "hub.key").write_bytes((keys / "hub.key").read_bytes())
    with pytest.raises(zmq.Again):
        register_with(router, stranger, "x", name="x", kind=PeerKind.CLIENT)
    assert metric(ready["metrics"], "ccaa_hub_refused_total", reason="handshake") >= 1
    assert '"handshake.refused"' in (procs.log_dir / "curve-hub.log").read_text()
