"""Many agents registering with the hub at once: does any of them wait past its liveness
budget for the hub?

The real hub runs as its own process. ``--processes`` worker processes each open
``--agents / --processes`` DEALER sockets (each one an agent to the hub: its own
connection, name and registration), register them all at the same instant, then send
each one's heartbeat every heartbeat interval for ``--seconds``, as agents do. Every
socket records how long its registration took and the longest silence between the
hub's answers it saw after sending its first message. A peer that hears nothing from
the hub for heartbeat_interval x liveness reconnects (and an agent whose heartbeats the
hub does not read in that time is declared lost), so that budget is the target: no
agent's longest silence may exceed it.

    python benchmarks/registration_storm.py [--agents 5000] [--processes 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.task_throughput import progress, ready, start, stop  # noqa: E402
from protocols import decode, encode, make_header  # noqa: E402
from protocols.peer import PeerHeartbeat, PeerKind, PeerRegister, PeerState  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One process's share of the agents; prints one JSON line of figures."""
    ctx = zmq.Context()
    socks = []
    for i in range(args.count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(args.hub)
        socks.append(s)
    names = [f"storm-{args.index}-{i}" for i in range(args.count)]
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    while time.time() < args.at:  # all processes start together
        time.sleep(0.001)  # wait-ok: the agreed start instant
    sent_at = [time.monotonic()] * args.count
    for s, name in zip(socks, names):
        s.send_multipart(encode(make_header(PeerRegister.TYPE, name, "hub"), PeerRegister(
            name=name, kind=PeerKind.AGENT, role="worker", capacity=1, pid=os.getpid(),
            host=f"storm-host-{args.index}")))
    registered = [0.0] * args.count
    last_heard = list(sent_at)
    longest = [0.0] * args.count
    next_beat = time.monotonic() + args.heartbeat
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for s, _ in poller.poll(timeout=20):
            i = index[s]
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic()
                longest[i] = max(longest[i], now - last_heard[i])
                last_heard[i] = now
                msg = decode(frames)
                if msg.header.type == "peer.registered" and not registered[i]:
                    registered[i] = now - sent_at[i]
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + args.heartbeat
            for i, s in enumerate(socks):
                if registered[i]:
                    s.send_multipart(encode(make_header(PeerHeartbeat.TYPE, names[i], "hub"),
                                            PeerHeartbeat(state=PeerState.IDLE)))
    now = time.monotonic()
    for i in range(args.count):  # silence still going on at the end counts too
        longest[i] = max(longest[i], now - last_heard[i])
    print(json.dumps({"registered": [r for r in registered if r],
                      "unregistered": registered.count(0.0), "longest": longest}), flush=True)
    for s in socks:
        s.close()
    ctx.term()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=5000)
    p.add_argument("--processes", type=int, default=10)
    p.add_argument("--seconds", type=float, default=15.0, help="how long to keep heartbeating")
    p.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat interval (s)")
    p.add_argument("--liveness", type=int, default=3, help="missed heartbeats tolerated")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hub", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="ccaa-storm-"))
    procs: list[subprocess.Popen[bytes]] = []
    budget = args.heartbeat * args.liveness
    try:
        hub = start(["services.hub", "--hub", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                     "--sub", "tcp://127.0.0.1:0", "--metrics-port", "0", "--log-level",
                     "warning", "--set", f'data_dir="{tmp}"',
                     "--set", f"communication.heartbeat_interval={args.heartbeat}",
                     "--set", f"communication.liveness={args.liveness}"], tmp / "hub.log")
        procs.append(hub)
        router = ready(hub)["router"]
        at = time.time() + 3.0
        share = [args.agents // args.processes + (i < args.agents % args.processes)
                 for i in range(args.processes)]
        workers = [subprocess.Popen(
            [sys.executable, __file__, "--worker", "--hub", router, "--count", str(n),
             "--index", str(i), "--at", str(at), "--seconds", str(args.seconds),
             "--heartbeat", str(args.heartbeat)], stdout=subprocess.PIPE,
            start_new_session=True) for i, n in enumerate(share)]
        procs.extend(workers)
        progress(f"{args.agents} agents in {args.processes} processes register at once")
        parts: list[dict] = []
        for w in workers:
            out, _ = w.communicate(timeout=args.seconds + 120)
            parts.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    if os.environ.get("STORM_DEBUG"):
        print([part["unregistered"] for part in parts])
    reg = sorted(x for part in parts for x in part["registered"])
    longest = sorted(x for part in parts for x in part["longest"])
    over = sum(1 for x in longest if x > budget)
    out = {"agents": args.agents, "registered": len(reg),
           "unregistered": sum(part["unregistered"] for part in parts),
           "register_p50_s": round(statistics.median(reg), 3) if reg else None,
           "register_max_s": round(reg[-1], 3) if reg else None,
           "silence_p99_s": round(longest[int(len(longest) * 0.99) - 1], 3),
           "silence_max_s": round(longest[-1], 3), "budget_s": budget, "over_budget": over}
    ok = "PASS" if over == 0 and out["unregistered"] == 0 else "MISS"
    print(f"{args.agents} agents registering at once ({args.processes} processes), "
          f"heartbeat {args.heartbeat:g} s, liveness budget {budget:g} s")
    print(f"  registered {out['registered']} (p50 {out['register_p50_s']} s, max "
          f"{out['register_max_s']} s), never registered {out['unregistered']}")
    print(f"  longest silence from the hub: p99 {out['silence_p99_s']} s, max "
          f"{out['silence_max_s']} s; over budget: {over} (target 0) {ok}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
