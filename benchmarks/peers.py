"""ccaa beside Celery + Redis, Dask and ipyparallel: the same workloads, in one run,
interleaved in rounds (medians), each ratio printed on a line of its own.

Every system gets ``--agents`` worker processes (ccaa: agents; Celery: a prefork worker of
that concurrency; Dask: that many single-threaded worker processes; ipyparallel: that many
engines), all on this machine, all started before the first round. Only the system whose
turn it is runs: the others' processes are stopped (SIGSTOP) meanwhile, for idle is not
free (a Dask cluster's workers and nannies take ~11% of a core doing nothing: profiler,
ticks, memory monitor), and it would be charged to whoever is measured. After its
processes go on again (SIGCONT) a system runs ``--warm`` untimed tasks first. Workloads:

- ``noop``: a task that does nothing, run in the worker's process (ccaa: the python
  executor), submitted one call at a time (``delay`` / ``submit`` / ``apply_async`` /
  ``command.submit``), then all awaited;
- ``noop_batch``: the same, submitted in one call (``group`` / ``map`` / ``map_async`` /
  ``command.submit_batch``);
- ``fork``: a task that runs ``true`` in a process of its own, one call at a time;
- ``seq``: one no-op task at a time, submit -> result (p50 ms).

ccaa's figure is whole one-task sessions, each persisted in SQLite before it is accepted;
Celery's Redis runs without persistence, Dask and ipyparallel keep their state in memory.

    pip install -e '.[bench]'; apt-get install redis-server
    python benchmarks/peers.py [--tasks 1000] [--rounds 3] [--only celery,dask] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from benchmarks.task_throughput import ROLES, Sessions, Stack, progress, stop  # noqa: E402

WORKLOADS = ("noop", "noop_batch", "fork")
PEERS = ("celery", "dask", "dask-inf", "ipyparallel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=HERE,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.1)  # wait-ok: polling a server's start under a deadline


class Peer:
    """A peer system's workers and client; its calls are blocking (run on one thread)."""

    name = ""
    procs: list[subprocess.Popen[bytes]]
    pids: list[int]  # every process it started, paused while another system is measured

    def one_by_one(self, n: int, kind: str) -> float: ...
    def batch(self, n: int) -> float: ...
    def sequential(self, n: int) -> list[float]: ...

    def close(self) -> None:
        stop(self.procs)


class CeleryPeer(Peer):
    name = "celery"

    def __init__(self, tmp: Path, workers: int):
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        self.procs = [spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], tmp / "redis.log")]
        os.environ["CCAA_BENCH_REDIS"] = url
        import peer_tasks

        peer_tasks.app.conf.broker_url = peer_tasks.app.conf.result_backend = url
        self.tasks = peer_tasks
        until(lambda: peer_tasks.app.backend.client.ping(), "redis-server")
        self.procs.append(spawn([sys.executable, "-m", "celery", "-A", "peer_tasks", "worker",
                                 "-c", str(workers), "-P", "prefork", "--without-gossip",
                                 "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
                                tmp / "celery.log", {"CCAA_BENCH_REDIS": url,
                                                     "PYTHONPATH": str(HERE)}))
        until(lambda: peer_tasks.celery_noop.delay(1).get(timeout=1) == 1, "the Celery worker")

    def one_by_one(self, n: int, kind: str) -> float:
        from celery.result import ResultSet

        task = self.tasks.celery_noop if kind == "noop" else self.tasks.celery_fork
        t0 = time.perf_counter()
        ResultSet([task.delay(i) for i in range(n)]).join_native(timeout=600)
        return n / (time.perf_counter() - t0)

    def batch(self, n: int) -> float:
        from celery import group

        t0 = time.perf_counter()
        group(self.tasks.celery_noop.s(i) for i in range(n)).apply_async().join_native(
            timeout=600)
        return n / (time.perf_counter() - t0)

    def sequential(self, n: int) -> list[float]:
        return timed(n, lambda i: self.tasks.celery_noop.delay(i).get(timeout=60))


class DaskPeer(Peer):
    def __init__(self, tmp: Path, workers: int, saturation: str = ""):
        from distributed import Client

        import peer_tasks

        self.name = "dask-inf" if saturation else "dask"
        self.tasks = peer_tasks
        port = free_port()
        env = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": saturation} \
            if saturation else {}
        self.procs = [spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                             "127.0.0.1", "--port", str(port), "--no-dashboard"],
                            tmp / f"{self.name}-scheduler.log", env)]
        self.procs.append(spawn([sys.executable, "-m", "distributed.cli.dask_worker",
                                 f"tcp://127.0.0.1:{port}", "--nworkers", str(workers),
                                 "--nthreads", "1", "--no-dashboard"],
                                tmp / f"{self.name}-workers.log", {"PYTHONPATH": str(HERE)}))
        self.client = until(lambda: Client(f"tcp://127.0.0.1:{port}", timeout=2),
                            f"the {self.name} scheduler")
        self.client.wait_for_workers(workers, timeout=60)

    def one_by_one(self, n: int, kind: str) -> float:
        fn = self.tasks.noop if kind == "noop" else self.tasks.fork
        t0 = time.perf_counter()
        self.client.gather([self.client.submit(fn, i, pure=False) for i in range(n)])
        return n / (time.perf_counter() - t0)

    def batch(self, n: int) -> float:
        t0 = time.perf_counter()
        self.client.gather(self.client.map(self.tasks.noop, range(n), pure=False))
        return n / (time.perf_counter() - t0)

    def sequential(self, n: int) -> list[float]:
        return timed(n, lambda i: self.client.submit(self.tasks.noop, i, pure=False).result())

    def close(self) -> None:
        self.client.close()
        super().close()


class IpyparallelPeer(Peer):
    name = "ipyparallel"

    def __init__(self, tmp: Path, workers: int):
        import ipyparallel as ipp

        import peer_tasks

        self.tasks = peer_tasks
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        self.cluster = ipp.Cluster(n=workers, profile_dir=str(tmp / "ipython"), log_level=40)
        self.client = self.cluster.start_and_connect_sync()
        self.client.wait_for_engines(workers, timeout=60)
        self.view = self.client.load_balanced_view()
        self.procs = []

    def one_by_one(self, n: int, kind: str) -> float:
        fn = self.tasks.noop if kind == "noop" else self.tasks.fork
        t0 = time.perf_counter()
        results = [self.view.apply_async(fn, i) for i in range(n)]
        self.view.wait(results)
        return n / (time.perf_counter() - t0)

    def batch(self, n: int) -> float:
        t0 = time.perf_counter()
        self.view.map_async(self.tasks.noop, range(n)).get()
        return n / (time.perf_counter() - t0)

    def sequential(self, n: int) -> list[float]:
        return timed(n, lambda i: self.view.apply_sync(self.tasks.noop, i))

    def close(self) -> None:
        self.client.close()
        self.cluster.stop_cluster_sync()


def descendants(pids: list[int]) -> list[Any]:
    """``pids`` and every process under them (psutil.Process), parents first."""
    import psutil

    found = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def pause(pids: list[int]) -> None:
    """Stop a system's processes (SIGSTOP) while another is measured."""
    _each(descendants(pids), "suspend")


def resume(pids: list[int]) -> None:
    """Let them go on (SIGCONT), children first."""
    _each(reversed(descendants(pids)), "resume")


def _each(procs: Any, action: str) -> None:
    import psutil

    for proc in procs:
        try:
            getattr(proc, action)()
        except psutil.NoSuchProcess:
            pass


def started_by(make: Callable[[], Any]) -> tuple[Any, list[int]]:
    """What ``make()`` returns, and the processes it started (children of this one)."""
    import psutil

    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    made = make()
    return made, [c.pid for c in me.children(recursive=True) if c.pid not in before]


def timed(n: int, call: Callable[[int], Any]) -> list[float]:
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        lat.append((time.perf_counter() - t0) * 1000)
    return sorted(lat)


def make_peer(name: str, tmp: Path, workers: int) -> Peer:
    if name == "celery":
        if shutil.which("redis-server") is None:
            raise SystemExit("celery needs redis-server (apt-get install redis-server)")
        return CeleryPeer(tmp, workers)
    if name == "dask":
        return DaskPeer(tmp, workers)
    if name == "dask-inf":
        return DaskPeer(tmp, workers, saturation="inf")
    return IpyparallelPeer(tmp, workers)


async def run(args: argparse.Namespace, stack: Stack, peers: list[Peer],
              pool: concurrent.futures.Executor) -> dict[str, dict[str, Any]]:
    loop = asyncio.get_running_loop()

    def on_pool(fn, *a):  # every peer call on the one thread its clients were made on
        return loop.run_in_executor(pool, fn, *a)

    rates: dict[str, dict[str, list[float]]] = {
        s: {w: [] for w in WORKLOADS} for s in ["ccaa", *(p.name for p in peers)]}
    seq: dict[str, list[float]] = {}
    processes = {"ccaa": [p.pid for p in stack.procs], **{p.name: p.pids for p in peers}}
    if not args.all_running:
        # the client's warnings that the hub is silent while ccaa's processes are stopped
        # for another system's turn are expected here (it registers again on its own)
        logging.getLogger("ccaa").setLevel(logging.ERROR)

    async def turn(peer: Peer | None) -> None:
        """The system runs alone: the others' processes are stopped; it warms up first."""
        name = "ccaa" if peer is None else peer.name
        if not args.all_running:
            for other, pids in processes.items():
                (resume if other == name else pause)(pids)
        if peer is None:
            await ccaa.warm(args.warm)
        else:
            await on_pool(peer.one_by_one, args.warm, "noop")
            await on_pool(peer.one_by_one, args.warm, "fork")

    try:
        async with Sessions(stack.comm, str(stack.tmp)) as ccaa:
            for r in range(args.rounds):
                order = [None, *peers]
                order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
                for peer in order:
                    name = "ccaa" if peer is None else peer.name
                    await turn(peer)
                    for kind in WORKLOADS:
                        if peer is None:
                            if kind == "noop_batch":
                                got = await ccaa.batch(args.tasks, ROLES["noop"])
                            else:
                                got = await ccaa.one_by_one(args.tasks, ROLES[kind],
                                                            args.concurrency)
                            rate = got["tasks_per_s"]
                        elif kind == "noop_batch":
                            rate = await on_pool(peer.batch, args.tasks)
                        else:
                            rate = await on_pool(peer.one_by_one, args.tasks, kind)
                        rates[name][kind].append(rate)
                progress(f"round {r + 1}/{args.rounds}: " + "; ".join(
                    f"{s} " + "/".join(f"{v[-1]:.0f}" for v in w.values())
                    for s, w in rates.items()) + " (noop/batch/fork tasks/s)")
            await turn(None)
            seq["ccaa"] = await ccaa.sequential(args.seq, ROLES["noop"])
            for peer in peers:
                await turn(peer)
                seq[peer.name] = await on_pool(peer.sequential, args.seq)
    finally:
        for pids in processes.values():
            resume(pids)  # to be stopped as usual
    out: dict[str, dict[str, Any]] = {}
    for name, by_kind in rates.items():
        out[name] = {f"{k}_tasks_per_s": round(statistics.median(v), 1)
                     for k, v in by_kind.items()}
        out[name]["seq_p50_ms"] = round(statistics.median(seq[name]), 2)
    return out


def ratios(out: dict[str, dict[str, Any]]) -> list[tuple[str, float, str]]:
    """(line, ratio, verdict) for every comparison and target."""
    lines = []
    peers = [p for p in out if p != "ccaa"]
    for kind in WORKLOADS:
        key = f"{kind}_tasks_per_s"
        for peer in peers:
            r = out["ccaa"][key] / out[peer][key]
            lines.append((f"{kind}: ccaa / {peer} = {r:.2f}", r, ""))
        if kind != "fork" and peers:
            best = max(peers, key=lambda p: out[p][key])
            r = out["ccaa"][key] / out[best][key]
            lines.append((f"{kind}: ccaa / best peer ({best}) = {r:.2f} (target >= 1.00)", r,
                          "PASS" if r >= 1 else "MISS"))
    for peer in peers:
        r = out["ccaa"]["seq_p50_ms"] / out[peer]["seq_p50_ms"]
        target = " (target <= 1.00)" if peer == "celery" else ""
        lines.append((f"seq p50: ccaa / {peer} = {r:.2f}{target}", r,
                      ("PASS" if r <= 1 else "MISS") if target else ""))
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000, help="tasks per workload per round")
    p.add_argument("--agents", type=int, default=4, help="worker processes of every system")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--noop-capacity", type=int, default=4,
                   help="ccaa: tasks one no-op agent runs at once (like Celery's prefetch)")
    p.add_argument("--concurrency", type=int, default=50,
                   help="ccaa: one-by-one submissions in flight")
    p.add_argument("--seq", type=int, default=200, help="sequential tasks for the latency")
    p.add_argument("--warm", type=int, default=50,
                   help="untimed tasks a system runs first when its turn comes")
    p.add_argument("--all-running", action="store_true",
                   help="leave every system's processes running during the others' turns "
                        "(what idle peers cost is then charged to whoever is measured)")
    p.add_argument("--only", default=",".join(PEERS),
                   help=f"peers to run (default: {','.join(PEERS)})")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(PEERS)
    if unknown:
        p.error(f"unknown peers: {', '.join(sorted(unknown))} (known: {', '.join(PEERS)})")
    tmp = Path(tempfile.mkdtemp(prefix="ccaa-peers-"))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    peers: list[Peer] = []
    try:
        with Stack(args.agents, args.noop_capacity) as stack:
            for name in names:
                progress(f"starting {name}")
                peer, pids = pool.submit(started_by, lambda: make_peer(name, tmp, args.agents)
                                         ).result()
                peer.pids = pids
                peers.append(peer)
            out = asyncio.run(run(args, stack, peers, pool))
    finally:
        for peer in peers:
            pool.submit(peer.close).result()
        pool.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.agents} worker processes each, {args.tasks} tasks per workload, "
          f"{args.rounds} interleaved rounds (medians); {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores")
    print(f"  {'system':12} {'noop/s':>9} {'batch/s':>9} {'fork/s':>9} {'seq p50 ms':>11}")
    for name, row in out.items():
        print(f"  {name:12} {row['noop_tasks_per_s']:9.0f} {row['noop_batch_tasks_per_s']:9.0f} "
              f"{row['fork_tasks_per_s']:9.0f} {row['seq_p50_ms']:11.2f}")
    for line, _, verdict in ratios(out):
        print(f"  {line}{' ' + verdict if verdict else ''}")
    if args.json:
        print(json.dumps({"systems": out, "ratios": {line: round(r, 3)
                                                      for line, r, _ in ratios(out)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
