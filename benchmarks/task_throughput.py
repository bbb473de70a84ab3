"""End-to-end task throughput: sessions of one no-op task through the whole real path.

client -> commands -> orchestrator (SQLite) -> distributor -> hub -> agent (runs `true` in
a process group of its own) -> orchestrator -> session succeeded. Every process is real and
separate; the agents use the command executor, so the figure includes a fork/exec per task.

Prints tasks/s and the submit -> session-succeeded latency (p50/p99), and, in the same run,
the cost of the executor alone (the same `true` run by the command executor in-process), so
the orchestration overhead per task can be read off. For scale: ARCHITECTURE.md lists peer
systems on this kind of machine at ~200-770 no-op tasks/s.

    python benchmarks/task_throughput.py [--tasks 300] [--agents 4] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.client import BusClient  # noqa: E402
from libs.config import CommunicationConfig  # noqa: E402
from libs.events import EventSubscriber  # noqa: E402
from protocols.command import CommandSubmit, CommandType  # noqa: E402


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                                stderr=err, env=env, cwd=ROOT, start_new_session=True)


def ready(proc: subprocess.Popen[bytes], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            line = proc.stdout.readline()
            if not line:
                break
            data = json.loads(line)
            if data.get("event") == "ready":
                return data
    raise SystemExit(f"{proc.args} did not start")


def start_core(tmp: Path, procs: list[subprocess.Popen[bytes]], settings: list[str]
               ) -> tuple[list[str], CommunicationConfig]:
    """The hub, commands, orchestrator and distributor, each its own process (appended to
    ``procs`` as they start); returns the flags that attach more processes (``settings``:
    --set values for all of them) and the bus's address for a client."""
    hub = start(["services.hub", "--hub", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                 "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0"], tmp / "hub.log")
    procs.append(hub)
    r = ready(hub)
    common = ["--hub", r["router"], "--pub", r["pub"], "--sub", r["sub"], "--metrics-port", "0",
              "--log-level", "warning"]
    for value in settings:
        common += ["--set", value]
    services = [start([m, *common], tmp / f"{m}.log")
                for m in ("services.commands", "services.orchestrator", "services.distributor")]
    procs.extend(services)
    for proc in services:
        ready(proc)
    return common, CommunicationConfig(router_endpoint=r["router"], pub_endpoint=r["pub"],
                                       sub_endpoint=r["sub"], message_timeout=60)


async def run(comm: CommunicationConfig, repo: str, tasks: int, concurrency: int) -> dict:
    done: dict[str, float] = {}
    submitted: dict[str, float] = {}
    finished = asyncio.Event()

    def on_event(topic: str, msg) -> None:
        sid = msg.body.session_id
        if topic == "session.succeeded":
            done[sid] = time.perf_counter()
            if len(done) >= tasks:
                finished.set()

    sub = EventSubscriber(comm.sub(), ["session.succeeded"], on_event)
    sub.start()
    await asyncio.sleep(0.3)  # let the subscription reach the hub before the first event
    gate = asyncio.Semaphore(concurrency)
    async with BusClient(comm) as bus:
        async def one(i: int) -> None:
            async with gate:
                t0 = time.perf_counter()
                reply = await bus.request("commands", CommandSubmit(
                    text="true", repo=repo, type=CommandType.RUN), timeout=60)
                submitted[reply.body.session_id] = t0  # type: ignore[attr-defined]

        start_t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(tasks)))
        await asyncio.wait_for(finished.wait(), 600)
        wall = time.perf_counter() - start_t
    await sub.close()
    lat = sorted((done[s] - submitted[s]) * 1000 for s in submitted if s in done)
    return {"tasks": tasks, "wall_s": round(wall, 3), "tasks_per_s": round(tasks / wall, 1),
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1)}


async def executor_alone(n: int) -> float:
    """Tasks/s of the command executor running `true`, with no bus at all."""
    from protocols.task import TaskSpec
    from services.agent.executors.base import RunContext
    from services.agent.executors.command import CommandExecutor

    ex = CommandExecutor(["true"])
    t0 = time.perf_counter()
    for i in range(n):
        spec = TaskSpec(task_id=f"t{i}", attempt_id=f"a{i}", session_id="s", prompt="true",
                        cwd=tempfile.gettempdir())
        await ex.run(RunContext(spec=spec, agent_id="x", progress=lambda *a: None))
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=300)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=50, help="submissions in flight")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ccaa-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        common, comm = start_core(tmp, procs, [
            f'data_dir="{tmp}"', f"orchestrator.max_parallel_tasks={args.agents * 2}",
            'agent_hierarchy.worker.executor="command"',
            'agent_hierarchy.worker.command=["true"]'])
        agents = [start(["services.agent", *common, "--name", f"bench-{i}"],
                        tmp / f"agent{i}.log") for i in range(args.agents)]
        procs.extend(agents)
        for proc in agents:
            ready(proc)
        result = asyncio.run(run(comm, str(tmp), args.tasks, args.concurrency))
        result["executor_alone_tasks_per_s"] = round(asyncio.run(executor_alone(100)), 1)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"end-to-end: {result['tasks']} one-task sessions, {args.agents} agents, "
              f"{args.concurrency} submissions in flight")
        print(f"  {result['tasks_per_s']} tasks/s  (wall {result['wall_s']} s)")
        print(f"  submit -> session succeeded: p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms")
        print(f"  the command executor alone (fork/exec of `true`): "
              f"{result['executor_alone_tasks_per_s']} tasks/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
