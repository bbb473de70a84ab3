"""Code over the bus: how long a task waits for its repository on a host that lacks it.

A repository with ~100 MB of history (random file contents, so git cannot compress them
away) is generated with git fast-import. Real hub, commands, orchestrator and distributor
processes run; each round then starts, one after another:

1. an agent with an empty cache (``code_transfer.mode = "always"``, a data directory of
   its own: a fresh host) and runs a task on the repository ("fresh");
2. after one small commit, a second task on the same agent ("incremental": only the new
   objects travel);
3. an agent that uses the repository in place (``mode = "never"``), for the baseline.

Each figure is the time from the distributor's assignment (the orchestrator's "assigned"
record) to the task's first command running in its worktree (the command writes the
time). Meanwhile a probe sends requests every 20 ms to the hub (``registry.list``) and
to the orchestrator (``session.list``), so the other traffic's latency during the fresh
transfer can be compared with its latency in a quiet spell before each round.

    python benchmarks/code_transfer.py [--mb 100] [--rounds 3] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from benchmarks.task_throughput import ready, start, start_core  # noqa: E402
from libs.client import BusClient  # noqa: E402
from libs.config import CommunicationConfig  # noqa: E402
from libs.events import EventSubscriber  # noqa: E402
from protocols.command import CommandStatus, CommandSubmit, CommandType, SessionList  # noqa: E402
from protocols.peer import PeerKind, RegistryList  # noqa: E402

PROBE_PERIOD = 0.02
QUIET_SECONDS = 1.5


def git(repo: Path, *args: str, data: bytes | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], input=data, check=True,
                          capture_output=True).stdout.decode().strip()


def make_repo(path: Path, megabytes: int, commits: int = 100) -> dict:
    """``commits`` commits whose files hold ``megabytes`` MB of random bytes in all."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    per_commit = max(1, megabytes * 1024 * 1024 // commits)
    stream = bytearray()
    for i in range(commits):
        blob = os.urandom(per_commit)
        stream += (f"commit refs/heads/main\nmark :{i + 1}\n"
                   f"committer bench <bench@example.com> {1_700_000_000 + i} +0000\n"
                   f"data 10\ncommit {i:03d}\n").encode()
        if i:
            stream += f"from :{i}\n".encode()
        stream += f"M 644 inline data/file{i % 20:02d}.bin\ndata {len(blob)}\n".encode()
        stream += blob + b"\n"
    git(path, "fast-import", "--quiet", data=bytes(stream))
    git(path, "reset", "-q", "--hard", "main")
    git(path, "config", "user.email", "bench@example.com")
    git(path, "config", "user.name", "bench")
    sizes = dict(line.split(": ") for line in git(path, "count-objects", "-v").splitlines())
    return {"commits": commits, "pack_mb": round(int(sizes["size-pack"]) / 1024, 1)}


def small_commit(repo: Path, n: int) -> None:
    (repo / f"change-{n}.txt").write_text(f"a small change {n}\n" * 20)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"small change {n}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


class Probe:
    """Sequential requests to the hub and the orchestrator: (sent at, ms) each."""

    def __init__(self, bus: BusClient):
        self.bus = bus
        self.samples: dict[str, list[tuple[float, float]]] = {"hub": [], "orchestrator": []}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        asks = (("hub", RegistryList(kind=PeerKind.AGENT)),
                ("orchestrator", SessionList(limit=1)))
        while not self.stop.is_set():
            for dst, body in asks:
                sent = time.time()
                t0 = time.perf_counter()
                await self.bus.request(dst, body, timeout=30)
                self.samples[dst].append((sent, (time.perf_counter() - t0) * 1000))
            try:
                await asyncio.wait_for(self.stop.wait(), PROBE_PERIOD)
            except asyncio.TimeoutError:
                pass

    def within(self, dst: str, windows: list[tuple[float, float]]) -> list[float]:
        return [ms for at, ms in self.samples[dst] if any(a <= at <= b for a, b in windows)]



class Bench:
    def __init__(self, tmp: Path, repo: Path, common: list[str], comm: CommunicationConfig):
        self.tmp, self.repo, self.common, self.comm = tmp, repo, common, comm
        self.procs: list[subprocess.Popen[bytes]] = []
        self.transferred: dict[str, int] = {}  # task id -> bytes fetched

    def on_progress(self, topic: str, msg) -> None:
        body = msg.body
        if body.kind == "code" and "transferred_bytes" in body.data:
            self.transferred[body.task_id] = body.data["transferred_bytes"]

    def agent(self, name: str, mode: str) -> subprocess.Popen[bytes]:
        proc = start(["services.agent", *self.common, "--name", name,
                      "--set", f'data_dir="{self.tmp / name}"',
                      "--set", f'code_transfer.mode="{mode}"'], self.tmp / f"{name}.log")
        self.procs.append(proc)
        ready(proc)
        return proc

    async def task(self, bus: BusClient, label: str) -> dict:
        """One task; seconds from its assignment to its first command, bytes fetched."""
        mark = self.tmp / f"first-{label}"
        reply = await bus.request("commands", CommandSubmit(
            text=f"date +%s.%N > {mark}", repo=str(self.repo), type=CommandType.RUN),
            timeout=60)
        sid = reply.body.session_id  # type: ignore[attr-defined]
        deadline = time.monotonic() + 600
        while True:
            st = (await bus.request("orchestrator", CommandStatus(session_id=sid))).body
            if st.session.state.value != "running":  # type: ignore[attr-defined]
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"task {label} did not finish")
            await asyncio.sleep(0.1)  # polling the session's state
        if st.session.state.value != "succeeded":  # type: ignore[attr-defined]
            raise SystemExit(f"task {label} ended {st.session.state.value}: "  # type: ignore
                             f"{st.session.detail}")
        assigned = next(h["ts"] for h in st.history if h["to_state"] == "assigned")  # type: ignore
        first = float(mark.read_text())
        task_id = st.tasks[0].task_id  # type: ignore[attr-defined]
        return {"seconds": first - assigned, "window": (assigned, first),
                "bytes": self.transferred.get(task_id, 0)}

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

    async def rounds(self, n: int) -> dict:
        sub = EventSubscriber(self.comm.sub(), ["task.progress"], self.on_progress)
        sub.start()
        figures: dict[str, list] = {"fresh": [], "incremental": [], "in_place": [],
                                    "fresh_bytes": [], "incremental_bytes": []}
        windows: list[tuple[float, float]] = []
        quiet: list[tuple[float, float]] = []  # nothing runs but the probe
        async with BusClient(self.comm) as bus:
            probe = Probe(bus)
            probing = asyncio.ensure_future(probe.run())
            for r in range(n):
                t0 = time.time()
                await asyncio.sleep(QUIET_SECONDS)  # a quiet spell, for the baseline latency
                quiet.append((t0, time.time()))
                agent = self.agent(f"far-{r}", "always")
                fresh = await self.task(bus, f"fresh-{r}")
                small_commit(self.repo, r)
                inc = await self.task(bus, f"incremental-{r}")
                self.stop(agent)
                agent = self.agent(f"near-{r}", "never")
                here = await self.task(bus, f"in-place-{r}")
                self.stop(agent)
                figures["fresh"].append(fresh["seconds"])
                figures["fresh_bytes"].append(fresh["bytes"])
                figures["incremental"].append(inc["seconds"])
                figures["incremental_bytes"].append(inc["bytes"])
                figures["in_place"].append(here["seconds"])
                windows.append(fresh["window"])
                print(f"  round {r + 1}: fresh {fresh['seconds']:.2f} s "
                      f"({fresh['bytes'] / 1e6:.1f} MB), incremental {inc['seconds']:.3f} s "
                      f"({inc['bytes']} B), in place {here['seconds']:.3f} s",
                      file=sys.stderr, flush=True)
            probe.stop.set()
            await probing
        await sub.close()
        latency = {}
        for dst in ("hub", "orchestrator"):
            idle, busy = probe.within(dst, quiet), probe.within(dst, windows)
            latency[dst] = {"idle_p50_ms": round(pct(idle, 0.5), 2),
                            "idle_p99_ms": round(pct(idle, 0.99), 2),
                            "transfer_p50_ms": round(pct(busy, 0.5), 2),
                            "transfer_p99_ms": round(pct(busy, 0.99), 2),
                            "transfer_max_ms": round(max(busy, default=float("nan")), 2),
                            "transfer_samples": len(busy)}
        return {"rounds": n,
                "fresh_s": round(statistics.median(figures["fresh"]), 3),
                "fresh_mb": round(statistics.median(figures["fresh_bytes"]) / 1e6, 1),
                "incremental_s": round(statistics.median(figures["incremental"]), 3),
                "incremental_bytes": int(statistics.median(figures["incremental_bytes"])),
                "in_place_s": round(statistics.median(figures["in_place"]), 3),
                "latency": latency}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100, help="history size to generate (MB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, caches)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ccaa-bench-transfer-"))
    print(f"generating a repository with ~{args.mb} MB of history in {tmp}", file=sys.stderr,
          flush=True)
    repo_info = make_repo(tmp / "repo", args.mb)
    procs: list[subprocess.Popen[bytes]] = []
    bench = None
    try:
        common, comm = start_core(tmp, procs, [
            f'data_dir="{tmp / "central"}"', 'agent_hierarchy.worker.executor="command"',
            'agent_hierarchy.worker.command=["bash", "-c", "{prompt}"]'])
        bench = Bench(tmp, tmp / "repo", common, comm)
        result = {"repo": repo_info, **asyncio.run(bench.rounds(args.rounds))}
    finally:
        for proc in procs + (bench.procs if bench else []):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return 0
    lat = result["latency"]
    print(f"repository: {repo_info['commits']} commits, {repo_info['pack_mb']} MB packed")
    print(f"assignment -> first command in the worktree (median of {args.rounds} rounds):")
    print(f"  fresh host (empty cache)  {result['fresh_s']:8.3f} s   "
          f"({result['fresh_mb']} MB over the bus)")
    print(f"  same host, one commit on  {result['incremental_s']:8.3f} s   "
          f"({result['incremental_bytes']} bytes over the bus)")
    print(f"  repository in place       {result['in_place_s']:8.3f} s   (no transfer)")
    print("other traffic while the fresh transfers ran (sequential requests every 20 ms):")
    for dst in ("hub", "orchestrator"):
        d = lat[dst]
        print(f"  {dst:<13} quiet p50 {d['idle_p50_ms']} ms p99 {d['idle_p99_ms']} ms | "
              f"during transfer p50 {d['transfer_p50_ms']} ms p99 {d['transfer_p99_ms']} ms "
              f"max {d['transfer_max_ms']} ms ({d['transfer_samples']} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
