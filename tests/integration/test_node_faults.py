"""A node that fails under its work: its controller killed with SIGKILL mid-task, and the
whole node stopped (SIGSTOP) for 10 s as if cut off from the hub. Its agents come back by
themselves; the task's work runs to its end once and its result is applied once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import _alive
from tests.integration.test_code_transfer import make_repo
from tests.integration.test_node import CENTRAL, free_ports, share_token, stop_all, tree_of
from tests.integration.test_stack_e2e import ccaa

NODE = """
data_dir = "{data}"
[metrics.ports]
controller = 0
[agent_hierarchy.worker]
count = 1
"""


class Stacks:
    """The hub's host (no workers of its own) and node-b with one worker."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        hub, pub, sub = free_ports(3)
        self.hub = hub
        self.central = tmp_path / "central.toml"
        self.central.write_text(CENTRAL.format(data=tmp_path / "central", hub=hub, pub=pub,
                                               sub=sub))
        self.node = tmp_path / "node.toml"
        self.node.write_text(NODE.format(data=tmp_path / "node"))
        self.repo = make_repo(tmp_path / "repo")
        self.marks = tmp_path / "marks"
        self.seen: set[int] = set()

    def __enter__(self) -> "Stacks":
        up = ccaa("up", config=self.central)
        assert up.returncode == 0, up.stdout + up.stderr
        self.seen.update(tree_of(self.tmp / "central" / "run" / "supervisord.pid"))
        share_token(self.tmp)
        node = ccaa("node", "--hub", f"tcp://127.0.0.1:{self.hub}", "--host-name", "node-b",
                    config=self.node)
        assert node.returncode == 0, node.stdout + node.stderr
        self.seen.update(self.node_tree())
        return self

    def __exit__(self, *exc: object) -> None:
        self.seen.update(self.node_tree())
        stop_all((self.node, []), (self.central, []))
        left = [p for p in self.seen if _alive(p)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if exc[0] is None:
            assert left == [], "processes left running"

    def node_tree(self) -> list[int]:
        try:
            return tree_of(self.tmp / "node" / "run" / "supervisord.pid")
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return []

    def submit(self, script: str) -> str:
        out = ccaa("submit", "RUN", script, "--repo", str(self.repo), config=self.central)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[1]

    def show(self, sid: str) -> dict:
        out = ccaa("show", sid, "--json", config=self.central)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait(self, sid: str, done, what: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.show(sid)
            if done(st):
                return st
            assert time.monotonic() < deadline, f"{what}: {st['session']} {st['tasks']}"
            time.sleep(0.2)  # wait-ok: polling the CLI under a deadline

    def ended(self, sid: str, timeout: float = 90) -> dict:
        return self.wait(sid, lambda st: st["session"]["state"] != "running", "the session",
                         timeout)

    def running(self, sid: str) -> dict:
        return self.wait(sid, lambda st: st["tasks"][0]["state"] == "running", "running")

    def agents(self) -> dict[str, dict]:
        out = ccaa("status", "--json", config=self.central)
        return {p["name"]: p for p in json.loads(out.stdout)["peers"] if p["kind"] == "agent"}


def details(st: dict) -> list[str]:
    return [h["detail"] for h in st["history"]]


@pytest.mark.timeout(240)
def test_a_node_controller_killed_mid_task_reruns_the_work_once(tmp_path):
    with Stacks(tmp_path) as s:
        sid = s.submit(f"sleep 3 && echo mark >> {s.marks}")
        s.running(sid)
        agent = s.agents()["agent-worker-node-b-1"]
        old = psutil.Process(agent["pid"])
        task_procs = [c.pid for c in old.children(recursive=True)]
        sup = psutil.Process(int((tmp_path / "node" / "run" / "supervisord.pid").read_text()))
        [controller] = sup.children()
        controller.kill()

        st = s.ended(sid)
        assert st["session"]["state"] == "succeeded", st["session"]
        assert s.marks.read_text().split() == ["mark"]  # the work ran to its end once
        task = st["tasks"][0]
        # the orphaned agent stopped its attempt (re-run at once, not a retry) and took no
        # new work while stopping; the restarted controller's agent ran it
        assert task["attempt"] == 2, details(st)
        assert any("stopped mid-run: agent stopping" in d for d in details(st)), details(st)
        assert not any(" lost" in d for d in details(st)), details(st)
        assert not old.is_running() and not any(_alive(p) for p in task_procs)
        assert s.agents()["agent-worker-node-b-1"]["pid"] != agent["pid"]


@pytest.mark.timeout(240)
def test_a_node_stopped_for_10s_comes_back_and_its_work_runs_once(tmp_path):
    with Stacks(tmp_path) as s:
        # about 6 s of work that makes no progress while stopped
        sid = s.submit(f"for i in $(seq 30); do sleep 0.2; done; echo mark >> {s.marks}")
        s.running(sid)
        stopped = s.node_tree()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            # cut off: the hub drops its agent and the orchestrator queues a re-run
            s.wait(sid, lambda st: st["tasks"][0]["state"] == "queued", "declared lost", 9)
            assert "agent-worker-node-b-1" not in s.agents()
            time.sleep(10 - 1)  # wait-ok: the partition itself lasts 10 s
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)

        s.wait(sid, lambda st: "agent-worker-node-b-1" in s.agents(), "back", 30)
        st = s.ended(sid)
        assert st["session"]["state"] == "succeeded", st["session"]
        assert s.marks.read_text().split() == ["mark"]
        task = st["tasks"][0]
        # the attempt the node went on with is the one kept; its re-run never started
        assert task["attempt"] == 1, details(st)
        assert any("agent-worker-node-b-1 lost" in d for d in details(st)), details(st)
        assert any("came back" in d and "attempt 2 withdrawn" in d for d in details(st)), \
            details(st)
        assigned = [h for h in st["history"] if h["to_state"] == "assigned"]
        assert len(assigned) == 1, details(st)  # nothing else was handed the task
