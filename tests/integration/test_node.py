"""`ccaa node`: a second host's controller and agent pools under their own supervisord,
attached to a hub by its address alone, configured by the hub's configuration."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil
import pytest

from tests.conftest import _alive
from tests.integration.test_code_transfer import git, make_repo
from tests.integration.test_stack_e2e import ccaa

#: the hub host's stack on ephemeral ports; ends in [communication], so a test's own
#: settings follow it (a heartbeat_interval line first)
HUB_HOST = """
data_dir = "{data}"
[metrics.ports]
hub = 0
commands = 0
orchestrator = 0
distributor = 0
controller = 0
[reporting]
http_port = 0
[communication]
hub_host = "127.0.0.1"
hub_port = {hub}
pub_port = {pub}
sub_port = {sub}
"""

CENTRAL = HUB_HOST + """heartbeat_interval = 0.3
[code_transfer]
mode = "always"  # the node takes its code over the bus, as on another host
[agent_hierarchy.worker]
count = 0
executor = "command"
command = ["bash", "-c", "echo defined-on-the-hub; {{prompt}}"]
[agent_hierarchy.architect]
count = 0
[agent_hierarchy.manager]
count = 0
[agent_hierarchy.utility]
count = 0
"""

NODE = """
data_dir = "{data}"
[metrics]
host = "127.0.0.1"
advertise_host = "node-b.example"
agent_ports = "{first}-{last}"
[metrics.ports]
controller = 0
[agent_hierarchy.worker]
count = 2
command = ["bash", "-c", "echo defined-on-the-node; {{prompt}}"]
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def share_token(tmp_path: Path) -> str:
    """What a node's operator copies from the hub's host: the bus token."""
    (tmp_path / "node").mkdir()
    token = (tmp_path / "central" / "bus.token").read_text()
    (tmp_path / "node" / "bus.token").write_text(token)
    return token


def stop_all(*stacks: tuple[Path, list[int]]) -> None:
    """`ccaa down` each (config, pids), then kill -9 whatever it left."""
    for config, pids in stacks:
        ccaa("down", config=config)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, 9)


def tree_of(pidfile: Path) -> list[int]:
    sup = psutil.Process(int(pidfile.read_text()))
    return [sup.pid] + [c.pid for c in sup.children(recursive=True)]


@pytest.mark.timeout(240)
def test_a_node_runs_the_hubs_roles_on_its_own_pools_and_stops_alone(tmp_path):
    hub, pub, sub = free_ports(3)
    central = tmp_path / "central.toml"
    central.write_text(CENTRAL.format(data=tmp_path / "central", hub=hub, pub=pub, sub=sub))
    first = free_ports(1)[0]
    node = tmp_path / "node.toml"
    node.write_text(NODE.format(data=tmp_path / "node", first=first, last=first + 20))
    repo = make_repo(tmp_path / "repo")
    central_pids: list[int] = []
    node_pids: list[int] = []
    try:
        up = ccaa("up", config=central)
        assert up.returncode == 0, up.stdout + up.stderr
        central_pids = tree_of(tmp_path / "central" / "run" / "supervisord.pid")
        # the node needs the hub's address and its token, nothing else of the hub's config
        token = share_token(tmp_path)

        # a role the hub does not define: refused before anything starts
        bad = ccaa("node", "--hub", f"tcp://127.0.0.1:{hub}", "--host-name", "node-b",
                   "--set", "agent_hierarchy.gpu.count=1", config=node)
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "role 'gpu'" in bad.stderr and "does not define" in bad.stderr, bad.stderr
        assert not (tmp_path / "node" / "run" / "supervisord.pid").exists()

        started = ccaa("node", "--hub", f"tcp://127.0.0.1:{hub}", "--host-name", "node-b",
                       config=node)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "node node-b is up" in started.stdout and "worker       2 agent(s)" in started.stdout
        assert "agent_hierarchy.worker.command in this host's config is not used" in started.stderr
        node_pids = tree_of(tmp_path / "node" / "run" / "supervisord.pid")
        assert len(node_pids) == 1 + 1 + 2  # supervisord, the controller, two workers
        effective = json.loads((tmp_path / "node" / "node-config.json").read_text())
        assert effective["communication"]["sub_endpoint"] == f"tcp://127.0.0.1:{sub}"
        assert token.strip() not in json.dumps(effective)

        status = ccaa("status", "--json", config=central)
        peers = json.loads(status.stdout)["peers"]
        by_name = {p["name"]: p for p in peers}
        assert "controller@node-b" in by_name
        workers = [p for p in peers if p["kind"] == "agent"]
        assert sorted(p["name"] for p in workers) == ["agent-worker-node-b-1",
                                                        "agent-worker-node-b-2"]
        for p in workers:  # /metrics in the node's range, at the address it advertises
            assert p["host"] == "node-b"
            head, port = p["metrics_url"].removesuffix("/metrics").rsplit(":", 1)
            assert head == "http://node-b.example" and first <= int(port) <= first + 20
        table = ccaa("status", config=central).stdout
        assert "host node-b: " in table

        # the work runs on the node with the role as the hub defines it, on code that
        # came over the bus (the hub's code_transfer.mode), and its branch comes back
        run = ccaa("submit", "RUN", "echo done > out.txt", "--repo", str(repo), "--wait",
                   "--wait-timeout", "60", config=central)
        assert run.returncode == 0, run.stdout + run.stderr
        sid = run.stdout.split()[1]
        task = json.loads(ccaa("show", sid, "--json", config=central).stdout)["tasks"][0]
        logs = ccaa("logs", task["task_id"], config=central).stdout
        assert "defined-on-the-hub" in logs and "defined-on-the-node" not in logs, logs
        assert "agent-worker-node-b-" in logs
        assert not (repo / "out.txt").exists()
        assert git(repo, "show", f"ccaa/{sid}/{task['task_id']}:out.txt") == "done"
        assert any((tmp_path / "node" / "repos").iterdir())

        # `ccaa down` with the node's config stops the node, and only the node
        down = ccaa("down", config=node)
        assert down.returncode == 0 and "ccaa is down" in down.stdout, down.stderr
        assert [p for p in node_pids if _alive(p)] == []
        assert all(_alive(p) for p in central_pids)
        again = ccaa("status", config=central)
        assert again.returncode == 0 and "controller@node-b" not in again.stdout
    finally:
        stop_all((node, node_pids), (central, central_pids))


@pytest.mark.timeout(240)
def test_a_curve_node_registers_with_keys_bound_to_its_host(tmp_path):
    """The README's walk-through: the hub's host makes a controller key and an agents key
    for host node-b; the node uses them (communication.node_key, agent_key)."""
    hub, pub, sub = free_ports(3)
    keys = tmp_path / "keys"
    central = tmp_path / "central.toml"
    central.write_text(CENTRAL.format(data=tmp_path / "central", hub=hub, pub=pub, sub=sub)
                       .replace("[communication]\n", f'[communication]\ncurve = true\n'
                                                     f'keys_dir = "{keys}"\n'))
    node = tmp_path / "node.toml"
    first = free_ports(1)[0]
    node.write_text(NODE.format(data=tmp_path / "node", first=first, last=first + 20)
                    + f'[communication]\ncurve = true\nkeys_dir = "{keys}"\n'
                      'node_key = "node-b"\nagent_key = "agents-b"\n')
    for args in (("keys", "init"), ("keys", "add", "node-b", "--service", "controller@node-b"),
                 ("keys", "add", "agents-b", "--role", "any", "--host", "node-b")):
        made = ccaa(*args, config=central)
        assert made.returncode == 0, made.stderr
    central_pids: list[int] = []
    node_pids: list[int] = []
    try:
        up = ccaa("up", config=central)
        assert up.returncode == 0, up.stdout + up.stderr
        central_pids = tree_of(tmp_path / "central" / "run" / "supervisord.pid")
        share_token(tmp_path)
        # under another host's name these keys are refused: they are node-b's
        wrong = ccaa("node", "--hub", f"tcp://127.0.0.1:{hub}", "--host-name", "node-c",
                     "--timeout", "20", config=node)
        assert wrong.returncode != 0
        assert "may register only as service controller@node-b" in wrong.stderr, wrong.stderr
        ccaa("down", config=node)
        started = ccaa("node", "--hub", f"tcp://127.0.0.1:{hub}", "--host-name", "node-b",
                       config=node)
        assert started.returncode == 0, started.stdout + started.stderr
        node_pids = tree_of(tmp_path / "node" / "run" / "supervisord.pid")
        audit = ccaa("audit", "--action", "register", "--json", config=central)
        rows = [json.loads(line) for line in audit.stdout.splitlines() if line.strip()] \
            if not audit.stdout.lstrip().startswith("[") else json.loads(audit.stdout)
        who = {r["actor"]: r["who"] for r in rows}
        assert who.get("controller@node-b") == "key node-b", rows
        assert who.get("agent-worker-node-b-1") == "key agents-b", rows
    finally:
        stop_all((node, node_pids), (central, central_pids))
