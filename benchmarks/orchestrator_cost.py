"""What the orchestrator alone spends per one-task session, without the bus: the real
Orchestrator and Store (SQLite file, a loop turn's writes committed together, as the
service runs) behind the unit tests' fake peer, creating sessions and applying their
results in this process. Far steadier than the end-to-end figures (no other process, no
sockets), so a change to the orchestrator can be measured to a few percent.

    python benchmarks/orchestrator_cost.py [--sessions 3000] [--rounds 5] [--per-turn 20]
                                           [--profile] [--json]

Prints microseconds of CPU per session (create + result, median of the rounds) and the
SQLite statements and commits per session; ``--profile`` adds the functions that take
the most time (cProfile, one more round).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocols.task import Outcome  # noqa: E402
from tests.unit.orchestrator_world import World  # noqa: E402


async def sessions(w: World, n: int, prefix: str, per_turn: int) -> None:
    """``n`` sessions created and their results applied, ``per_turn`` messages to a loop
    turn (its writes commit together at the turn's end, as under load in the service); a
    session's result comes in a later turn than its creation, as from a real agent."""
    for start in range(0, n, per_turn):
        ids = [f"{prefix}{i}" for i in range(start, min(n, start + per_turn))]
        task_ids = [await w.create(sid) for sid in ids]
        await asyncio.sleep(0)  # the turn ends: its writes commit
        for task_id in task_ids:
            await w.result(task_id, Outcome.SUCCEEDED, "agent-1", released=True)
        await asyncio.sleep(0)


def one_round(n: int, per_turn: int, profile: cProfile.Profile | None = None
              ) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ccaa-orch-cost-") as tmp:
        async def main() -> dict[str, float]:
            # room for every session of a turn, as the throughput benchmark gives
            w = World(Path(tmp), max_parallel_tasks=max(40, 2 * per_turn))
            w.store.group_commit = True
            try:
                await sessions(w, 100, "warm", per_turn)
                statements = [0]
                w.store.conn.set_trace_callback(lambda _: statements.__setitem__(
                    0, statements[0] + 1))
                commits = w.store.commits
                if profile is not None:
                    profile.enable()
                t0 = time.process_time()
                await sessions(w, n, "s", per_turn)
                cpu = time.process_time() - t0
                if profile is not None:
                    profile.disable()
                w.store.conn.set_trace_callback(None)
                ended = w.store.conn.execute(
                    "SELECT state, COUNT(*) FROM sessions GROUP BY state").fetchall()
                if dict(ended) != {"succeeded": n + 100}:
                    raise SystemExit(f"not every session succeeded: {dict(ended)}")
                return {"us_per_session": cpu / n * 1e6, "statements": statements[0] / n,
                        "commits": (w.store.commits - commits) / n}
            finally:
                w.close()
                w.store.close()
        return asyncio.run(main())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=3000, help="sessions per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-turn", type=int, default=12,
                   help="messages of a kind handled in one loop turn (one commit each turn; "
                        "the throughput benchmark commits ~once per 12 tasks under load)")
    p.add_argument("--profile", action="store_true", help="also print where the time goes")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args()
    runs = []
    for r in range(args.rounds):
        runs.append(one_round(args.sessions, args.per_turn))
        print(f"  round {r + 1}/{args.rounds}: {runs[-1]['us_per_session']:.0f} us per session",
              file=sys.stderr, flush=True)
    out = {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
    out["rounds_us"] = [round(run["us_per_session"], 1) for run in runs]
    print(f"orchestrator alone, one-task sessions (create + result), {args.sessions} per round, "
          f"{args.per_turn} messages a turn, {args.rounds} rounds (median): "
          f"{out['us_per_session']:.0f} us CPU per session; "
          f"{out['statements']:.1f} SQLite statements and {out['commits']:.3f} commits each")
    if args.profile:
        prof = cProfile.Profile()
        one_round(args.sessions, args.per_turn, prof)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
