"""A peer that loses the hub reconnects and registers again with a new hub on the same
endpoint; the controller restarts agents that die and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from libs.client import BusClient
from libs.config import CommunicationConfig
from protocols.peer import PeerKind, RegistryList
from protocols.task import QueueStats, QueueStatsReply
from tests.conftest import _alive


def ipc_hub(procs, tmp_path, name="hub"):
    args = ["--hub", f"ipc://{tmp_path}/r.sock", "--pub", f"ipc://{tmp_path}/p.sock",
            "--sub", f"ipc://{tmp_path}/s.sock", "--metrics-port", "0",
            "--set", "communication.heartbeat_interval=0.2", "--set", "communication.liveness=3",
            "--set", f'data_dir="{tmp_path}"']
    proc = procs.service("services.hub", *args, name=name)
    return proc, procs.ready(proc), args


async def peers(comm) -> dict[str, PeerKind]:
    async with BusClient(comm, connect_timeout=5) as bus:
        reply = await bus.request("hub", RegistryList())
    return {p.name: p.kind for p in reply.body.peers}


async def wait_for_peers(comm, want: set[str], timeout: float, hub_pid: int | None = None):
    deadline = time.monotonic() + timeout
    while True:
        async with BusClient(comm, connect_timeout=5) as bus:
            reply = await bus.request("hub", RegistryList())
        names = {p.name for p in reply.body.peers}
        if want <= names and (hub_pid is None or reply.body.hub_pid == hub_pid):
            return reply.body
        assert time.monotonic() < deadline, f"still missing {want - names}"
        await asyncio.sleep(0.1)  # wait-ok: polling the registry under a deadline


@pytest.mark.timeout(60)
def test_agent_reregisters_with_a_restarted_hub(procs, tmp_path):
    hub, ready, hub_args = ipc_hub(procs, tmp_path)
    comm = CommunicationConfig(router_endpoint=ready["router"], pub_endpoint=ready["pub"],
                               sub_endpoint=ready["sub"], heartbeat_interval=0.2, liveness=3)
    agent = procs.service("services.agent", *hub_args, "--name", "agent-steady",
                          "--set", f'data_dir="{tmp_path}"', name="agent")
    procs.ready(agent)
    first = asyncio.run(wait_for_peers(comm, {"agent-steady"}, 10))

    procs.kill(hub)  # SIGKILL: the agent hears nothing more
    hub.wait(5)
    hub2, _, _ = ipc_hub(procs, tmp_path, name="hub2")
    started = time.monotonic()
    second = asyncio.run(wait_for_peers(comm, {"agent-steady"}, 15, hub_pid=hub2.pid))
    assert second.hub_id != first.hub_id
    # silence detection (0.2 s x 3) plus a registration round trip, with scheduling slack
    assert time.monotonic() - started < 10
    assert agent.poll() is None  # the same agent process, never restarted


@pytest.mark.timeout(90)
def test_controller_restarts_dead_agents_and_stops_them_all(procs, bus):
    controller = procs.service("services.controller", *bus.args(), "--host-name", "testhost",
                               "--set", "agent_hierarchy.worker.count=2",
                               "--set", 'agent_hierarchy.worker.executor="command"',
                               "--set", "agent_hierarchy.architect.count=0",
                               "--set", "agent_hierarchy.manager.count=0",
                               "--set", "agent_hierarchy.utility.count=0")
    procs.ready(controller)
    comm = bus.comm()
    names = {"agent-worker-testhost-1", "agent-worker-testhost-2"}
    asyncio.run(wait_for_peers(comm, names | {"controller@testhost"}, 30))

    agents = {p.pid: p for p in psutil.Process(controller.pid).children()}
    assert len(agents) == 2
    victim = next(iter(agents.values()))
    victim_name = victim.cmdline()[victim.cmdline().index("--name") + 1]
    assert victim_name in names
    os.kill(victim.pid, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while True:  # a new process with the same agent name registers again
        children = psutil.Process(controller.pid).children()
        replaced = [c for c in children if c.pid not in agents and victim_name in c.cmdline()]
        if replaced:
            break
        assert time.monotonic() < deadline, "the controller did not restart the agent"
        time.sleep(0.1)  # wait-ok: polling the process table under a deadline
    asyncio.run(wait_for_peers(comm, {victim_name}, 20))

    tree = [c.pid for c in psutil.Process(controller.pid).children(recursive=True)]
    os.kill(controller.pid, signal.SIGTERM)
    controller.wait(20)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree):
        assert time.monotonic() < deadline, [p for p in tree if _alive(p)]
        time.sleep(0.05)  # wait-ok: polling the process table under a deadline


#: a controller running one worker and no other agent
ONE_WORKER = ("--set", "agent_hierarchy.worker.count=1", "--set", "agent_hierarchy.architect.count=0",
              "--set", "agent_hierarchy.manager.count=0", "--set", "agent_hierarchy.utility.count=0")


@pytest.mark.timeout(120)
def test_controller_scales_a_pool_up_while_work_waits_and_down_when_idle(procs, bus, tmp_path):
    from protocols.command import CommandSubmit, CommandType
    from tests.integration.test_bus_flow import session_state, wait_for

    args = bus.args()
    for m in ("services.commands", "services.orchestrator", "services.distributor"):
        procs.ready(procs.service(m, *args))
    controller = procs.service(
        "services.controller", *args, "--host-name", "h",
        *ONE_WORKER,
        "--set", "auto_scaling.enabled=true", "--set", "auto_scaling.interval=0.3",
        "--set", "auto_scaling.cooldown=0", "--set", "auto_scaling.idle_before_scale_down=1",
        "--set", "auto_scaling.min_agents_per_type={worker = 1}",
        "--set", "auto_scaling.max_agents_per_type={worker = 2}")
    procs.ready(controller)
    comm = bus.comm()
    repo = tmp_path / "repo"
    repo.mkdir()

    async def go():
        await wait_for_peers(comm, {"agent-worker-h-1"}, 30)
        async with BusClient(comm) as client:
            sids = []
            for i in range(2):
                acc = await client.request("commands", CommandSubmit(
                    text=f"sleep 2; echo {i}", repo=str(repo), type=CommandType.RUN))
                sids.append(acc.body.session_id)
            # the second task waits, the only agent is busy: a second agent is started
            await wait_for_peers(comm, {"agent-worker-h-2"}, 20)
            for sid in sids:
                async def done(sid=sid):
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None
                st = await wait_for(done, 30, "the sessions")
                assert st.session.state.value == "succeeded"
            # idle again: back to the minimum of one
            deadline = time.monotonic() + 20
            while True:
                reply = await client.request("hub", RegistryList(kind=PeerKind.AGENT))
                names = {p.name for p in reply.body.peers}
                if names == {"agent-worker-h-1"}:
                    break
                assert time.monotonic() < deadline, names
                await asyncio.sleep(0.2)  # wait-ok: polling the registry under a deadline

    asyncio.run(go())


@pytest.mark.timeout(120)
def test_auto_scaling_starts_no_agent_the_hosts_memory_cannot_hold(procs, bus, tmp_path):
    import urllib.request

    from protocols.command import CommandSubmit, CommandType
    from tests.integration.test_bus_flow import session_state, wait_for

    args = bus.args()
    for m in ("services.commands", "services.orchestrator", "services.distributor"):
        procs.ready(procs.service(m, *args))
    controller = procs.service(
        "services.controller", *args, "--host-name", "small",
        *ONE_WORKER,
        "--set", "auto_scaling.enabled=true", "--set", "auto_scaling.interval=0.3",
        "--set", "auto_scaling.cooldown=0",
        "--set", "auto_scaling.max_agents_per_type={worker = 3}",
        "--set", "resources.reserve_memory_mb=100000000")  # no host has this much to spare
    ready = procs.ready(controller)
    comm = bus.comm()
    repo = tmp_path / "repo"
    repo.mkdir()

    def metric(name: str) -> float:
        with urllib.request.urlopen(ready["metrics"] + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return -1.0

    async def go():
        await wait_for_peers(comm, {"agent-worker-small-1"}, 30)
        async with BusClient(comm) as client:
            sids = []
            for i in range(2):
                acc = await client.request("commands", CommandSubmit(
                    text=f"sleep 1.5; echo {i}", repo=str(repo), type=CommandType.RUN))
                sids.append(acc.body.session_id)

            async def bound():  # work waits, the only agent is busy, memory says no
                return metric('ccaa_pool_memory_bound_total{role="worker"}') > 0 or None
            await wait_for(bound, 20, "a scale-up refused for memory")
            assert metric("ccaa_pool_memory_room_agents") == 0
            for sid in sids:  # the work still gets done, one task after the other
                async def done(sid=sid):
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None
                st = await wait_for(done, 30, "the sessions")
                assert st.session.state.value == "succeeded"
            reply = await client.request("hub", RegistryList(kind=PeerKind.AGENT))
            assert {p.name for p in reply.body.peers} == {"agent-worker-small-1"}

    asyncio.run(go())


@pytest.mark.timeout(90)
def test_controller_stops_and_restarts_an_agent_over_its_memory_limit(procs, bus):
    import urllib.request

    controller = procs.service(
        "services.controller", *bus.args(), "--host-name", "m",
        *ONE_WORKER,
        "--set", "resources.max_memory_mb=5")  # any Python process is over 5 MB
    ready = procs.ready(controller)
    first = {c.pid for c in psutil.Process(controller.pid).children()}
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(ready["metrics"] + "/metrics", timeout=5) as r:
            text = r.read().decode()
        stopped = 'ccaa_pool_memory_stops_total{role="worker"}' in text and \
            'ccaa_pool_memory_stops_total{role="worker"} 0.0' not in text
        now = {c.pid for c in psutil.Process(controller.pid).children()}
        if stopped and now - first:
            break  # stopped for memory, and a new process took its place
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)  # wait-ok: polling metrics and the process table under a deadline


@pytest.mark.timeout(90)
def test_two_hosts_controllers_share_one_hub_each_with_its_own_pool(procs, bus):
    """Controllers are named per host: a second host's controller registers beside the
    first (it was refused as a duplicate "controller"), runs its own pool, and reports its
    host's cores, memory and load, which `ccaa status` shows above that host's agents."""
    common = ["--set", 'agent_hierarchy.worker.executor="command"',
              "--set", "agent_hierarchy.architect.count=0",
              "--set", "agent_hierarchy.manager.count=0",
              "--set", "agent_hierarchy.utility.count=0"]
    for host, count in (("host-a", 1), ("host-b", 2)):
        procs.ready(procs.service("services.controller", *bus.args(), "--host-name", host,
                                  "--set", f"agent_hierarchy.worker.count={count}", *common,
                                  name=f"controller-{host}"))
    comm = bus.comm()
    want = {"controller@host-a", "controller@host-b", "agent-worker-host-a-1",
            "agent-worker-host-b-1", "agent-worker-host-b-2"}
    asyncio.run(wait_for_peers(comm, want, 30))

    async def stats():
        deadline = time.monotonic() + 10
        while True:  # host stats come with the controllers' first heartbeats
            async with BusClient(comm, connect_timeout=5) as client:
                reply = (await client.request("hub", RegistryList())).body
            controllers = [p for p in reply.peers if p.name.startswith("controller@")]
            if all(p.host_stats for p in controllers):
                return reply
            assert time.monotonic() < deadline, controllers
            await asyncio.sleep(0.1)  # wait-ok: polling the registry under a deadline

    reply = asyncio.run(stats())
    by_name = {p.name: p for p in reply.peers}
    for host in ("host-a", "host-b"):
        s = by_name[f"controller@{host}"].host_stats
        assert s["cores"] == psutil.cpu_count() and s["memory_mb"] > 0 and s["load1"] >= 0
    from services.cli.views import status_table

    table = status_table(reply, comm.router()).splitlines()
    for host, agents in (("host-a", 1), ("host-b", 2)):
        at = next(i for i, line in enumerate(table) if line.startswith(f"host {host}: "))
        assert table[at + 1].split()[0] == f"controller@{host}"
        rows = [r.split()[0] for r in table[at + 2:at + 2 + agents]]
        assert rows == [f"agent-worker-{host}-{i}" for i in range(1, agents + 1)], table


@pytest.mark.timeout(60)
def test_a_peer_whose_loop_stalled_registers_again_and_its_requests_are_answered(bus):
    """A client whose event loop blocks past the liveness budget is declared lost by the
    hub. Having sent no heartbeat while blocked, it must not take the hub for silent and
    replace its socket (the replies due on it would be lost and the requests would wait
    out their deadlines): it registers again on the same socket, and the requests the hub
    refused meanwhile are sent again and answered."""
    comm = bus.comm()
    budget = bus.heartbeat * bus.liveness

    async def go():
        async with BusClient(comm) as client:
            peer = client.peer
            waiting = asyncio.ensure_future(client.request("hub", RegistryList(), timeout=4))
            await asyncio.sleep(0)  # wait-ok: lets the request reach the socket's outbox
            time.sleep(budget * 3)  # wait-ok: the stall under test (a long blocking call)
            started = time.monotonic()
            reply = await waiting
            assert client.name in {p.name for p in reply.body.peers}
            after = await client.request("hub", RegistryList(), timeout=4)
            assert client.name in {p.name for p in after.body.peers}
            return (time.monotonic() - started,
                    peer.metrics.reconnects._value.get(),
                    peer.metrics.resent.labels(RegistryList.TYPE)._value.get())

    waited, reconnects, resent = asyncio.run(go())
    assert reconnects == 0, "a stalled loop is not a silent hub"
    assert resent >= 1, "the refused request was answered without being sent again?"
    assert waited < 2, f"the reply took {waited:.1f}s after the stall"


@pytest.mark.timeout(60)
def test_requests_refused_inside_one_bundle_are_sent_again(procs, bus):
    """Two requests to the same peer in one loop turn travel as one bundle; if the hub
    refuses the bundle (the sender was declared lost while its loop stalled), the refusal
    names the bundle, and both requests inside it must still be sent again and answered."""
    procs.ready(procs.service("services.distributor", *bus.args()))
    comm = bus.comm()
    asyncio.run(wait_for_peers(comm, {"distributor"}, timeout=20))
    budget = bus.heartbeat * bus.liveness

    async def go():
        async with BusClient(comm) as client:
            peer = client.peer
            both = asyncio.gather(*(client.request("distributor", QueueStats(), timeout=4)
                                    for _ in range(2)))
            await asyncio.sleep(0)  # wait-ok: lets both requests reach the socket's outbox
            time.sleep(budget * 3)  # wait-ok: the stall under test (a long blocking call)
            started = time.monotonic()
            replies = await both
            return (time.monotonic() - started, replies,
                    peer.metrics.sent.labels("bus.bundle")._value.get(),
                    peer.metrics.resent.labels(QueueStats.TYPE)._value.get())

    waited, replies, bundles, resent = asyncio.run(go())
    assert all(isinstance(r.body, QueueStatsReply) for r in replies)
    assert bundles >= 1, "the two requests were not bundled: the test tests nothing"
    assert resent == 2, f"{resent} of the 2 bundled requests were sent again"
    assert waited < 2, f"the replies took {waited:.1f}s after the stall"
