"""End-to-end task throughput and latency: one-task sessions through the whole real path.

client -> commands -> orchestrator (SQLite) -> distributor -> hub -> agent -> orchestrator
-> session succeeded. Every service and agent is a separate real process. Workloads, run
interleaved in rounds (medians reported; these machines are noisy):

- ``noop``: the agent completes the task in its own process (the python executor awaiting
  the coroutine ``benchmarks.noop:noop`` on its loop, as Celery's prefork child runs its
  task inline): what the orchestration itself costs per task.
- ``noop_batch``: the same, all submitted in one ``command.submit_batch`` per 1,000.
- ``fork``: the agent runs ``true`` in a process group of its own (the command executor),
  so each task includes a fork/exec; compared with ``executor_alone``, the same executor
  running ``true`` in-process with no bus at all (target: fork >= 90% of it).
- ``seq``: one task at a time, submit -> session succeeded (p50/p99 ms).

    python benchmarks/task_throughput.py [--tasks 1000] [--agents 4] [--rounds 3] [--json]

``--json`` ends with one JSON line holding ``noop_tasks_per_s``, ``noop_batch_tasks_per_s``,
``fork_tasks_per_s``, ``executor_alone_tasks_per_s``, ``seq_p50_ms`` (and the rest).
``--sustained N`` instead runs N sessions back to back and compares the throughput of the
last 1,000 with the first 1,000 (target: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
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
from services.agent.executors.base import watch_children_by_pidfd  # noqa: E402

#: the role of each workload's agents and what that role runs
ROLES = {"noop": "worker", "fork": "utility"}
ROLE_SETTINGS = ['agent_hierarchy.worker.executor="python"',
                 'agent_hierarchy.worker.callable="benchmarks.noop:noop"',
                 'agent_hierarchy.utility.executor="command"',
                 'agent_hierarchy.utility.command=["true"]']


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


class Sessions:
    """Submits one-task RUN sessions and learns of their ends from the event stream."""

    def __init__(self, comm: CommunicationConfig, repo: str):
        self.comm = comm
        self.repo = repo
        self.ended: dict[str, float] = {}
        self.failed: list[str] = []
        self._wanted: set[str] = set()
        self._missing = 0  # of the sessions waited for, those not ended yet
        self._all = asyncio.Event()
        self._on_end = None  # called with each ended session's id (sustained load)

    def _on_event(self, topic: str, msg) -> None:
        sid = msg.body.session_id
        if sid in self.ended:
            return
        self.ended[sid] = time.perf_counter()
        if topic != "session.succeeded":
            self.failed.append(sid)
        if self._on_end is not None:
            self._on_end(sid)
        if sid in self._wanted:
            self._missing -= 1
            if self._missing == 0:
                self._all.set()

    async def __aenter__(self) -> "Sessions":
        self.sub = EventSubscriber(self.comm.sub(), ["session.succeeded", "session.failed",
                                                     "session.partial", "session.cancelled"],
                                   self._on_event)
        self.sub.start()
        self.bus = await BusClient(self.comm).__aenter__()
        await self.warm()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.bus.close()
        await self.sub.close()

    async def warm(self, n: int = 1) -> None:
        """``n`` sessions per role, so the subscription is live, every agent is there and
        every path is warm."""
        for role in ROLES.values():
            await self.wait(await self.submit_each(n, role, min(n, 10)), 60)

    def command(self, role: str) -> CommandSubmit:
        return CommandSubmit(text="true", repo=self.repo, type=CommandType.RUN, role=role)

    async def submit_each(self, n: int, role: str, concurrency: int,
                          started: dict[str, float] | None = None) -> list[str]:
        gate = asyncio.Semaphore(concurrency)
        ids: list[str] = []

        async def one() -> None:
            async with gate:
                t0 = time.perf_counter()
                reply = await self.bus.request("commands", self.command(role), timeout=120)
                sid = reply.body.session_id  # type: ignore[attr-defined]
                ids.append(sid)
                if started is not None:
                    started[sid] = t0
        await asyncio.gather(*(one() for _ in range(n)))
        return ids

    async def wait(self, ids: list[str], timeout: float = 900) -> None:
        self._wanted = set(ids)
        self._missing = len(self._wanted - self.ended.keys())
        self._all.clear()
        if self._missing:
            await asyncio.wait_for(self._all.wait(), timeout)
        failed = set(self.failed)
        bad = [s for s in ids if s in failed]
        if bad:
            raise SystemExit(f"{len(bad)} benchmark session(s) did not succeed, e.g. {bad[0]}")

    async def one_by_one(self, n: int, role: str, concurrency: int) -> dict:
        started: dict[str, float] = {}
        t0 = time.perf_counter()
        ids = await self.submit_each(n, role, concurrency, started)
        await self.wait(ids)
        wall = max(self.ended[s] for s in ids) - t0
        lat = sorted((self.ended[s] - started[s]) * 1000 for s in ids)
        return {"tasks_per_s": n / wall, "p50_ms": statistics.median(lat),
                "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)]}

    async def batch(self, n: int, role: str) -> dict:
        t0 = time.perf_counter()
        accepted = await self.bus.submit_many([self.command(role)] * n, timeout=120)
        ids = [a.session_id for a in accepted]
        await self.wait(ids)
        return {"tasks_per_s": n / (max(self.ended[s] for s in ids) - t0)}

    async def sequential(self, n: int, role: str) -> list[float]:
        """Latencies (ms, sorted) of ``n`` sessions one at a time; each one's submit and
        end (wall clock) are kept in ``self.walls`` for :func:`seq_stages`."""
        lat = []
        self.walls: dict[str, tuple[float, float]] = {}
        for _ in range(n):
            wall, t0 = time.time(), time.perf_counter()
            ids = await self.submit_each(1, role, 1)
            await self.wait(ids)
            lat.append((self.ended[ids[0]] - t0) * 1000)
            self.walls[ids[0]] = (wall, wall + self.ended[ids[0]] - t0)
        return sorted(lat)

    async def sustained(self, n: int, role: str, window: int = 1000,
                        open_sessions: int = 200) -> list[float]:
        """Tasks/s of each consecutive ``window`` of ``n`` sessions (by end time), with
        ``open_sessions`` kept running: a new one is submitted as each one ends, so every
        window sees the same load."""
        ended: asyncio.Queue[str] = asyncio.Queue()
        self._on_end = ended.put_nowait
        t0 = time.perf_counter()
        ids = await self.submit_each(min(n, open_sessions), role, 50)
        while len(ids) < n:
            await ended.get()
            k = 1
            while not ended.empty():
                ended.get_nowait()
                k += 1
            ids += await self.submit_each(min(k, n - len(ids)), role, 50)
        await self.wait(ids, timeout=max(900, n / 20))
        self._on_end = None
        ends = sorted(self.ended[s] for s in ids)
        return [window / (ends[k + window - 1] - (ends[k - 1] if k else t0))
                for k in range(0, len(ends) - window + 1, window)]


async def executor_alone(n: int) -> float:
    """Tasks/s of the command executor running `true`, with no bus at all: as an agent
    runs it (the task's own minimal environment; children watched as the agent watches
    them, see main)."""
    from protocols.task import TaskSpec
    from services.agent.executors.base import RunContext
    from services.agent.executors.command import CommandExecutor
    from services.agent.executors.environment import task_env

    ex = CommandExecutor(["true"], env=task_env())
    t0 = time.perf_counter()
    for i in range(n):
        spec = TaskSpec(task_id=f"t{i}", attempt_id=f"a{i}", session_id="s", prompt="true",
                        cwd=tempfile.gettempdir())
        await ex.run(RunContext(spec=spec, agent_id="x", progress=lambda *a: None))
    return n / (time.perf_counter() - t0)


class Stack:
    """The core services and ``agents`` agents of each workload's role, in a temporary
    data directory; stopped (by process group) on exit. ``noop_capacity``: tasks one
    no-op agent runs at once (in-process work, like a Celery worker's prefetch); the fork
    agents run one task at a time each (one process per task, like a prefork worker)."""

    def __init__(self, agents: int, noop_capacity: int = 4, parallel: int = 0):
        self.agents = agents
        self.capacity = {ROLES["noop"]: noop_capacity, ROLES["fork"]: 1}
        self.parallel = parallel or agents * sum(self.capacity.values()) * 2
        self.procs: list[subprocess.Popen[bytes]] = []
        self.kinds: dict[int, str] = {}  # pid -> what it is, for the CPU figures

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user+sys, with the children each has waited for: the forks of
        the tasks) each kind of process has used so far."""
        import psutil
        out: dict[str, float] = {}
        for proc in self.procs:
            try:
                t = psutil.Process(proc.pid).cpu_times()
            except psutil.Error:
                continue
            kind = self.kinds.get(proc.pid, "?")
            out[kind] = out.get(kind, 0.0) + t.user + t.system + t.children_user + t.children_system
        me = os.times()  # the submitting client: this process
        out["client"] = me.user + me.system
        return out

    def commits(self) -> float:
        """The orchestrator's ccaa_state_commits_total, scraped from its metrics port."""
        import urllib.request

        import psutil
        from prometheus_client.parser import text_string_to_metric_families
        pid = next(pid for pid, kind in self.kinds.items() if kind == "orchestrator")
        [port] = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return next(sample.value for family in text_string_to_metric_families(text)
                    for sample in family.samples if sample.name == "ccaa_state_commits_total")

    def __enter__(self) -> "Stack":
        self.tmp = Path(tempfile.mkdtemp(prefix="ccaa-bench-"))
        try:
            common, self.comm = start_core(self.tmp, self.procs, [
                f'data_dir="{self.tmp}"', f"orchestrator.max_parallel_tasks={self.parallel}",
                *ROLE_SETTINGS])
            agents = [start(["services.agent", *common, "--role", role, "--name",
                             f"bench-{role}-{i}", "--capacity", str(capacity)],
                            self.tmp / f"{role}{i}.log")
                      for role, capacity in self.capacity.items() for i in range(self.agents)]
            self.procs.extend(agents)
            names = ["hub", "commands", "orchestrator", "distributor"]
            self.kinds = {proc.pid: name for proc, name in zip(self.procs, names)}
            self.kinds.update((proc.pid, "agents") for proc in agents)
            for proc in agents:
                ready(proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        stop(self.procs)
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
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
            proc.wait(5)


#: the steps of a session, as its history records them: (kind, from, to) -> what it means
STAGES = {("session", "", "running"): "session created",
          ("task", "ready", "queued"): "queued",
          ("task", "assigned", "running"): "agent started it",
          ("task", "running", "succeeded"): "result applied",
          ("session", "running", "succeeded"): "session ended"}


def seq_stages(db: Path, walls: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Where a sequential session's time goes: the median ms from its submit to each step
    its history records (the orchestrator's clock is this machine's, as the client's), and
    to the client seeing its end. ("agent started it" is told by the result: its end less
    its duration.)"""
    import sqlite3

    names = [*STAGES.values(), "client saw the end"]
    offsets: dict[str, list[float]] = {name: [] for name in names}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for sid, (submitted, ended) in walls.items():
            for ts, kind, src, dst in conn.execute(
                    "SELECT ts, kind, from_state, to_state FROM events WHERE session_id=?",
                    (sid,)):
                name = STAGES.get((kind, src, dst))
                if name is not None:
                    offsets[name].append((ts - submitted) * 1000)
            offsets["client saw the end"].append((ended - submitted) * 1000)
    finally:
        conn.close()
    return {name: round(statistics.median(v), 2) for name, v in offsets.items() if v}


async def measure(stack: Stack, args: argparse.Namespace) -> dict:
    rounds: dict[str, list[dict]] = {"noop": [], "noop_batch": [], "fork": []}
    cpu: dict[str, dict[str, float]] = {name: {} for name in rounds}  # CPU s by process kind
    commits = dict.fromkeys(rounds, 0.0)  # state database commits by workload

    async def timed(name: str, run) -> None:
        before, committed = stack.cpu(), stack.commits()
        rounds[name].append(await run)
        for kind, used in stack.cpu().items():
            cpu[name][kind] = cpu[name].get(kind, 0.0) + used - before.get(kind, 0.0)
        commits[name] += stack.commits() - committed

    async with Sessions(stack.comm, str(stack.tmp)) as s:
        for r in range(args.rounds):
            await timed("noop", s.one_by_one(args.tasks, ROLES["noop"], args.concurrency))
            await timed("noop_batch", s.batch(args.tasks, ROLES["noop"]))
            await timed("fork", s.one_by_one(args.tasks, ROLES["fork"], args.concurrency))
            progress(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1]['tasks_per_s']:.0f}/s" for k, v in rounds.items()))
        seq = await s.sequential(args.seq, ROLES["noop"])
        stages = seq_stages(stack.tmp / "orchestrator.db", s.walls)
    out: dict = {"tasks": args.tasks, "rounds": args.rounds, "agents": args.agents,
                 "noop_capacity": args.noop_capacity, "concurrency": args.concurrency}
    for name, runs in rounds.items():
        out[f"{name}_tasks_per_s"] = round(statistics.median(r["tasks_per_s"] for r in runs), 1)
        out[f"{name}_rounds"] = [round(r["tasks_per_s"], 1) for r in runs]
        if "p50_ms" in runs[0]:
            out[f"{name}_p50_ms"] = round(statistics.median(r["p50_ms"] for r in runs), 1)
            out[f"{name}_p99_ms"] = round(statistics.median(r["p99_ms"] for r in runs), 1)
    done = args.tasks * args.rounds
    out["cpu_ms_per_task"] = {name: {kind: round(used / done * 1000, 3)
                                     for kind, used in sorted(by_kind.items())}
                              for name, by_kind in cpu.items()}
    out["state_commits_per_task"] = {name: round(n / done, 3) for name, n in commits.items()}
    out["seq_p50_ms"] = round(statistics.median(seq), 2)
    out["seq_p99_ms"] = round(seq[max(0, int(len(seq) * 0.99) - 1)], 2)
    out["seq_stages_ms"] = stages
    out["executor_alone_tasks_per_s"] = round(await executor_alone(300), 1)
    out["fork_vs_executor_alone"] = round(out["fork_tasks_per_s"]
                                          / out["executor_alone_tasks_per_s"], 3)
    return out


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def report(out: dict) -> None:
    ok = "PASS" if out["fork_vs_executor_alone"] >= 0.9 else "MISS"
    print(f"one-task sessions, {out['agents']} agents per workload (no-op agents run "
          f"{out['noop_capacity']} at once), {out['tasks']} tasks per round, {out['rounds']} "
          "interleaved rounds (medians)")
    print(f"  noop, submitted one by one ({out['concurrency']} in flight): "
          f"{out['noop_tasks_per_s']} tasks/s  (p50 {out['noop_p50_ms']} ms)")
    print(f"  noop, submitted as a batch:                {out['noop_batch_tasks_per_s']} tasks/s")
    print(f"  fork (`true` per task), one by one:         {out['fork_tasks_per_s']} tasks/s")
    print(f"  the command executor alone (no bus):        "
          f"{out['executor_alone_tasks_per_s']} tasks/s")
    print(f"  target fork >= 90% of executor alone: {out['fork_vs_executor_alone']:.0%} {ok}")
    print(f"  sequential submit -> succeeded: p50 {out['seq_p50_ms']} ms, "
          f"p99 {out['seq_p99_ms']} ms")
    print("  sequential, ms from submit to each step (medians): " + ", ".join(
        f"{name} {ms}" for name, ms in out["seq_stages_ms"].items()))
    print("  CPU ms per task (user+sys, tasks' own processes in agents):")
    for name, by_kind in out["cpu_ms_per_task"].items():
        print(f"    {name:<11} total {sum(by_kind.values()):5.2f}: "
              + ", ".join(f"{kind} {ms:.2f}" for kind, ms in by_kind.items()))
    print("  state database commits per task (a loop turn's writes commit together): "
          + ", ".join(f"{name} {n}" for name, n in out["state_commits_per_task"].items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000, help="tasks per workload per round")
    p.add_argument("--agents", type=int, default=4, help="agents per workload")
    p.add_argument("--noop-capacity", type=int, default=4,
                   help="tasks one no-op agent runs at once (default 4, like a Celery "
                        "worker's prefetch; fork agents run one each)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=50, help="submissions in flight")
    p.add_argument("--seq", type=int, default=200, help="sequential tasks for the latency")
    p.add_argument("--sustained", type=int, metavar="N",
                   help="run N noop sessions and compare the last 1,000 with the first")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    watch_children_by_pidfd()  # as an agent does: the executor alone runs in this process
    with Stack(args.agents, args.noop_capacity) as stack:
        if args.sustained:
            windows = asyncio.run(_sustained(stack, args.sustained))
            out = {"sessions": args.sustained, "window_tasks_per_s": windows,
                   "last_vs_first": round(windows[-1] / windows[0], 3)}
        else:
            out = asyncio.run(measure(stack, args))
    if args.sustained:
        ok = "PASS" if out["last_vs_first"] >= 0.9 else "MISS"
        print(f"{args.sustained} sessions, tasks/s per 1,000: "
              + " ".join(str(w) for w in out["window_tasks_per_s"]))
        print(f"  last 1,000 vs first 1,000: {out['last_vs_first']:.0%} (target >= 90%) {ok}")
    else:
        report(out)
    if args.json:
        print(json.dumps(out))
    return 0


async def _sustained(stack: Stack, n: int) -> list[float]:
    async with Sessions(stack.comm, str(stack.tmp)) as s:
        return [round(w, 1) for w in await s.sustained(n, ROLES["noop"])]


if __name__ == "__main__":
    sys.exit(main())
