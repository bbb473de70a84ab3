"""Makespan of a planned session: how close the schedule comes to the ideal.

A real IMPLEMENT_FEATURE session (plan -> work a || b -> work c, each work step taking
``--step`` seconds; gates, reviews and merges as usual) runs on the real services with
``--workers`` workers. The agents run the scripted agent CLI of the test suite (the
command executor), so the figure is the orchestration's, not a model's.

From the session's own history it prints each task's wait (ready -> running) and run
time, and compares the makespan (the first work task starting -> the last task ending)
with the ideal max(critical path, work / workers), where the critical path is the
longest chain of measured run times through the dependencies (a task's gate and review
follow it; a dependent task follows its dependencies' reviews). Target: <= 1.05 x ideal.

    python benchmarks/makespan.py [--rounds 3] [--step 3] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.task_throughput import progress, ready, start, start_core, stop  # noqa: E402
from libs.client import BusClient  # noqa: E402
from protocols.command import CommandStatus, CommandSubmit, CommandType  # noqa: E402

SCRIPT = ROOT / "tests" / "fixtures" / "scripted_agent.py"


def make_repo(path: Path) -> None:
    path.mkdir()
    (path / "README.md").write_text("sample\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)


def timeline(history: list[dict]) -> dict[str, dict[str, float]]:
    """task id -> the first time it entered each state."""
    seen: dict[str, dict[str, float]] = {}
    for h in history:
        if h["kind"] == "task" and h["to_state"]:
            seen.setdefault(h["task_id"], {}).setdefault(h["to_state"], h["ts"])
    return seen


def analyse(status, workers: int) -> dict:
    times = timeline(status.history)
    tasks = {t.task_id: t for t in status.tasks}
    run: dict[str, float] = {}
    for tid, st in times.items():
        end = min((st[s] for s in ("succeeded", "failed", "cancelled", "timed_out") if s in st),
                  default=None)
        if "running" in st and end is not None:
            run[tid] = end - st["running"]
    work = [tid for tid, t in tasks.items() if t.kind == "work" and tid in run]
    # a work task's own follow-ups (gate, review) hang off it as children
    children: dict[str, list[str]] = {}
    for tid, t in tasks.items():
        if t.parent:
            children.setdefault(t.parent, []).append(tid)

    def chain(tid: str) -> float:
        """The work task, then its follow-ups one after another (longest path down)."""
        own = run.get(tid, 0.0)
        return own + max((chain(c) for c in children.get(tid, [])), default=0.0)

    finish: dict[str, float] = {}

    def path(tid: str) -> float:
        if tid not in finish:
            deps = [d for d in tasks[tid].depends_on if d in tasks]
            finish[tid] = max((path(d) for d in deps), default=0.0) + chain(tid)
        return finish[tid]

    critical = max((path(t) for t in work), default=0.0)
    busy = sum(run[t] for t in work) + sum(run[c] for t in work for c in children.get(t, [])
                                           if tasks[c].role == "worker" and c in run)
    ideal = max(critical, busy / workers)
    start_t = min(times[t]["running"] for t in work)
    end_t = max(max(st.values()) for tid, st in times.items()
                if tid in work or tasks[tid].parent in work)
    waits = sorted(times[t]["running"] - times[t]["ready"] for t in run if "ready" in times[t])
    return {"makespan_s": round(end_t - start_t, 3), "ideal_s": round(ideal, 3),
            "critical_path_s": round(critical, 3), "ratio": round((end_t - start_t) / ideal, 3),
            "wait_p50_s": round(statistics.median(waits), 3), "wait_max_s": round(waits[-1], 3),
            "tasks": len(run)}


async def session(comm, repo: Path, timeout: float = 180):
    async with BusClient(comm) as bus:
        acc = await bus.request("commands", CommandSubmit(
            text="Create alpha, beta and gamma files", repo=str(repo),
            type=CommandType.IMPLEMENT_FEATURE, gates=[]))
        sid = acc.body.session_id  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            st = (await bus.request("orchestrator", CommandStatus(session_id=sid))).body
            if st.session.state.value != "running":  # type: ignore[attr-defined]
                return st
            if loop.time() > deadline:
                raise SystemExit(f"session {sid} still running after {timeout}s")
            await asyncio.sleep(0.2)  # wait-ok: polling a benchmark's session


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step", type=float, default=3.0, help="seconds per work step")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ccaa-makespan-"))
    agent = f'["{sys.executable}", "{SCRIPT}", "{{prompt}}"]'
    settings = [f'data_dir="{tmp}"', "orchestrator.max_parallel_tasks=8"]
    for role in ("architect", "manager", "worker"):
        settings += [f"agent_hierarchy.{role}.command={agent}",
                     f'agent_hierarchy.{role}.executor="command"',
                     f'agent_hierarchy.{role}.env_passthrough=["SCRIPTED_*"]']
    procs: list[subprocess.Popen[bytes]] = []
    results = []
    try:
        common, comm = start_core(tmp, procs, settings)
        os.environ["SCRIPTED_WORK_DELAY"] = str(args.step)
        roles = ["architect", "manager", *["worker"] * args.workers, "utility"]
        for i, role in enumerate(roles):
            proc = start(["services.agent", *common, "--role", role, "--name", f"{role}-{i}"],
                         tmp / f"agent{i}.log")
            procs.append(proc)
            ready(proc)
        for r in range(args.rounds):
            repo = tmp / f"repo{r}"
            make_repo(repo)
            status = asyncio.run(session(comm, repo))
            if status.session.state.value != "succeeded":
                raise SystemExit(f"the session ended {status.session.state.value}: "
                                 f"{status.session.detail}")
            results.append(analyse(status, args.workers))
            progress(f"round {r + 1}: {results[-1]}")
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    out = {key: round(statistics.median(r[key] for r in results), 3)
           for key in results[0] if key != "tasks"}
    ok = "PASS" if out["ratio"] <= 1.05 else "MISS"
    print(f"planned session a || b -> c, {args.step:g} s per work step, {args.workers} workers, "
          f"{args.rounds} rounds (medians)")
    print(f"  makespan {out['makespan_s']} s; ideal {out['ideal_s']} s (critical path "
          f"{out['critical_path_s']} s); ratio {out['ratio']} (target <= 1.05) {ok}")
    print(f"  wait ready -> running: p50 {out['wait_p50_s']} s, max {out['wait_max_s']} s")
    if args.json:
        print(json.dumps({**out, "rounds": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
