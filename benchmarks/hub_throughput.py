"""Hub throughput and round-trip latency, against a bare pyzmq forwarder, in one run.

What is measured
----------------
Three processes, each its own interpreter (on a 2-core machine they share the cores):

    agent DEALER --task.result-----> middle --task.result-----> service DEALER
    agent DEALER <--task.result_ack-- middle <--task.result_ack-- service DEALER

``middle`` is one of

* **hub**  - the real hub, started as ``python -m services.hub`` (ROUTER_MANDATORY, header
  decode + validation, registry and src checks, metrics). Both clients register first
  (``peer.register`` -> ``peer.registered``) and heartbeat while idle.
* **bare** - a synchronous pyzmq ROUTER written here that forwards by a destination frame,
  ``[src_id, dst, *rest] -> [dst, src_id, *rest]``: no codec, no validation.
* **raw**  - (context only; ``--no-raw`` skips it) the same bare forwarder with clients
  that skip the codec: the agent sends frames encoded once, the service echoes them.

In **hub** and **bare** the clients do exactly the same work: the agent builds a header
with ``make_header`` and encodes a small ``TaskResult`` with ``encode``; the service
``decode``s it and replies with an encoded ``TaskResultAck`` with ``corr`` = request id;
the agent decodes the reply and matches ``corr``. So hub vs bare isolates the cost of the
middle process; raw shows the ceiling when the clients cost (almost) nothing.

How to read the figures
-----------------------
* throughput: ``--messages`` round trips pipelined with at most ``--window`` in flight.
  Printed as **round trips/s** and **routed msgs/s** (= 2 x round trips/s; each round
  trip crosses the middle twice). Median of ``--repeat`` rounds; each round runs every
  topology once, in rotated order.
* latency: one request in flight, ``--latency-samples`` round trips (after a warm-up);
  p50/p99 in microseconds, including the clients' encode/decode.
* CPU us: CPU time (user+sys, all threads incl. libzmq's I/O thread) each process used
  during the throughput runs - the middle per routed message, the clients per round
  trip. With 2 cores and 3 busy processes the clients usually bound the throughput, so
  this is the figure that shows what the hub itself costs.
* ratio = hub / bare throughput, the median of the per-round ratios (paired runs, so
  background load on the machine cancels out better); the target is >= 0.50 and
  PASS/FAIL is printed. The exit status is 0 either way unless ``--check`` is given
  (then 1 on FAIL).

Run:  python benchmarks/hub_throughput.py [--messages N --window W --latency-samples K
                                           --repeat R --json --check --no-raw]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import signal
import socket as pysocket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import zmq  # noqa: E402

from protocols import decode, encode, make_header  # noqa: E402
from protocols.header import HUB  # noqa: E402
from protocols.peer import PeerHeartbeat, PeerKind, PeerRegister  # noqa: E402
from protocols.task import Outcome, TaskResult, TaskResultAck  # noqa: E402

TARGET_RATIO = 0.50
STARTUP_TIMEOUT = 20.0
PHASE_TIMEOUT = 120.0


# ---- client processes -----------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies, so nothing is
    left behind even if the benchmark itself is killed with SIGKILL. No-op elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Link:
    """One DEALER to the middle process; hides the forwarder's destination/source frame."""

    def __init__(self, mode: str, endpoint: str, name: str):
        self.mode = mode
        self.name = name
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        if mode != "hub":
            self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes], dst: str) -> None:
        if self.mode != "hub":
            self.sock.send_multipart([dst.encode(), *frames])
        else:
            self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int | None = None) -> list[bytes] | None:
        if timeout_ms is not None and not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart()
        return frames[1:] if self.mode != "hub" else frames

    def handshake(self, kind: PeerKind) -> None:
        """hub: register and wait for peer.registered. bare: a message to ourselves
        through the forwarder (proves the route exists in both directions)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.mode == "hub":
                body = PeerRegister(name=self.name, kind=kind, role="bench", pid=os.getpid(),
                                    host=pysocket.gethostname())
                self.send(encode(make_header(body.TYPE, self.name, HUB), body), HUB)
            else:
                self.send([b"hello"], self.name)
            frames = self.recv(500)
            if frames is None:
                continue
            if self.mode == "hub":
                msg = decode(frames)
                if msg.header.type != "peer.registered":
                    raise RuntimeError(f"{self.name}: registration refused: {msg.body!r}")
            while self.recv(100) is not None:
                pass  # late answers to a repeated handshake must not reach the measurement
            return
        raise RuntimeError(f"{self.name}: no handshake reply within {STARTUP_TIMEOUT}s")

    def heartbeat(self) -> None:
        """Keep the hub from declaring us lost while idle (no-op without a hub)."""
        if self.mode == "hub":
            body = PeerHeartbeat()
            self.send(encode(make_header(body.TYPE, self.name, HUB), body), HUB)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _names(mode: str) -> tuple[str, str]:
    """(agent, service) peer names of one topology (bare and raw share the forwarder)."""
    return f"bench-{mode}-agent", f"bench-{mode}-service"


def _service_main(mode: str, endpoint: str, conn: Any) -> None:
    """Answer every task.result with a task.result_ack (corr = request id) until killed.
    raw: echo the frames back untouched (no codec)."""
    _die_with_parent()
    _, me = _names(mode)
    link = _Link(mode, endpoint, me)
    link.handshake(PeerKind.SERVICE)
    conn.send(("ready", os.getpid()))
    sock = link.sock
    routed = mode != "hub"  # bare/raw: first frame is the peer's routing id
    while True:
        if not sock.poll(1000, zmq.POLLIN):
            link.heartbeat()
            continue
        while True:  # drain
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if mode == "raw":
                sock.send_multipart(frames)  # [src_id, header, body] -> back to src_id
                continue
            msg = decode(frames[1:] if routed else frames)
            h = msg.header
            if h.type != TaskResult.TYPE:
                if h.type == "error":  # e.g. our reply was undeliverable; say so
                    print(f"{me}: error from {h.src}: {msg.body!r}", file=sys.stderr)
                continue  # heartbeat replies from the hub
            b = msg.body
            reply = TaskResultAck(task_id=b.task_id, attempt_id=b.attempt_id, applied=True)
            out = encode(make_header(reply.TYPE, me, h.src, corr=h.id), reply)
            if routed:
                sock.send_multipart([h.src.encode(), *out])
            else:
                sock.send_multipart(out)


def _result_body(agent: str) -> TaskResult:
    return TaskResult(session_id="s-0001", task_id="t-0001", attempt_id="a-0001",
                      agent_id=agent, outcome=Outcome.SUCCEEDED, exit_code=0,
                      stdout="ok\n", duration_s=0.012, data={"tokens": 12})


class _Requester:
    """The agent's side of one round trip: real codec, replies matched by corr."""

    def __init__(self, link: _Link, agent: str, service: str):
        self.link, self.agent, self.service = link, agent, service
        self.body = _result_body(agent)
        self.pending: set[str] = set()

    def request(self) -> None:
        header = make_header(TaskResult.TYPE, self.agent, self.service)
        self.pending.add(header.id)
        self.link.send(encode(header, self.body), self.service)

    def await_reply(self) -> bool:
        """Wait for one message; True if it completed a round trip."""
        frames = self.link.recv(int(PHASE_TIMEOUT * 1000))
        if frames is None:
            raise RuntimeError(f"no reply within {PHASE_TIMEOUT}s "
                               f"({len(self.pending)} in flight)")
        msg = decode(frames)
        h = msg.header
        if h.type == TaskResultAck.TYPE:
            self.pending.remove(h.corr)  # KeyError: a reply we never asked for
            return True
        if h.type == "error":
            raise RuntimeError(f"error reply: {msg.body!r}")
        return False  # peer.heartbeat reply from the hub


class _RawRequester(_Requester):
    """raw: the same frames, encoded once, echoed back; no codec per message."""

    def __init__(self, link: _Link, agent: str, service: str):
        super().__init__(link, agent, service)
        self.frames = encode(make_header(TaskResult.TYPE, agent, service), self.body)
        self.in_flight = 0

    def request(self) -> None:
        self.in_flight += 1
        self.link.send(self.frames, self.service)

    def await_reply(self) -> bool:
        if self.link.recv(int(PHASE_TIMEOUT * 1000)) is None:
            raise RuntimeError(f"no reply within {PHASE_TIMEOUT}s ({self.in_flight} in flight)")
        self.in_flight -= 1
        return True


def _agent_main(mode: str, endpoint: str, conn: Any) -> None:
    """Run the phases the parent asks for; send back the measurements."""
    _die_with_parent()
    me, service = _names(mode)
    link = _Link(mode, endpoint, me)
    link.handshake(PeerKind.AGENT)
    conn.send(("ready", os.getpid()))
    req = (_RawRequester if mode == "raw" else _Requester)(link, me, service)

    while True:
        while not conn.poll(0.5):  # idle: heartbeat so the hub never declares us lost
            link.heartbeat()
            while link.recv(0) is not None:  # drop the hub's heartbeat replies
                pass
        cmd = conn.recv()
        if cmd[0] == "stop":
            break
        if cmd[0] == "throughput":
            n, window = cmd[1], cmd[2]
            sent = done = 0
            t0 = time.perf_counter()
            while sent < min(window, n):
                req.request()
                sent += 1
            while done < n:
                if req.await_reply():
                    done += 1
                    if sent < n:
                        req.request()
                        sent += 1
            elapsed = time.perf_counter() - t0
            conn.send(("throughput", n, elapsed))
        elif cmd[0] == "latency":
            k, warmup = cmd[1], cmd[2]
            samples: list[int] = []
            for i in range(k + warmup):
                t0 = time.perf_counter_ns()
                req.request()
                while not req.await_reply():
                    pass
                if i >= warmup:
                    samples.append(time.perf_counter_ns() - t0)
            conn.send(("latency", samples))
    link.close()


def _forwarder_main(conn: Any) -> None:
    """The bare baseline: a synchronous ROUTER forwarding by a destination frame."""
    _die_with_parent()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 100_000)
    router.setsockopt(zmq.RCVHWM, 100_000)
    router.bind("tcp://127.0.0.1:0")
    conn.send(("ready", router.getsockopt_string(zmq.LAST_ENDPOINT)))
    while True:
        frames = router.recv_multipart()
        if len(frames) < 3:
            continue
        frames[0], frames[1] = frames[1], frames[0]  # [src, dst, ...] -> [dst, src, ...]
        try:
            router.send_multipart(frames)
        except zmq.ZMQError:
            pass  # unknown destination: drop


# ---- parent ---------------------------------------------------------------------------


def _start_hub(stderr_file: Any) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "services.hub", "--hub", "tcp://127.0.0.1:0",
           "--pub", "tcp://127.0.0.1:0", "--sub", "tcp://127.0.0.1:0",
           "--metrics-port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=stderr_file, text=True, preexec_fn=_die_with_parent)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(STARTUP_TIMEOUT)
    if not line or not line[0].strip():
        raise RuntimeError("the hub printed no ready line (see its stderr above)")
    ready = json.loads(line[0])
    if ready.get("event") != "ready":
        raise RuntimeError(f"unexpected first hub line: {line[0]!r}")
    return proc, ready["router"]


def _expect(conn: Any, what: str, timeout: float = STARTUP_TIMEOUT) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"timed out waiting for {what}")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{what}: the process exited (see its traceback above)") from None


class Topology:
    """The middle process plus one agent and one service process."""

    def __init__(self, name: str, endpoint: str, middle_pid: int, ctx: Any, procs: list[Any]):
        self.name = name
        svc_parent, svc_child = ctx.Pipe()
        self.service = ctx.Process(target=_service_main, args=(name, endpoint, svc_child),
                                   daemon=True)
        self.service.start()
        procs.append(self.service)
        _expect(svc_parent, f"{name} service ready")
        self.conn, agent_child = ctx.Pipe()
        self.agent = ctx.Process(target=_agent_main, args=(name, endpoint, agent_child),
                                 daemon=True)
        self.agent.start()
        procs.append(self.agent)
        _expect(self.conn, f"{name} agent ready")
        self._svc_conn = svc_parent  # keep the pipe open for the service's lifetime
        self.cpu_procs = {"middle": psutil.Process(middle_pid),
                          "agent": psutil.Process(self.agent.pid),
                          "service": psutil.Process(self.service.pid)}
        self.cpu_s = {k: 0.0 for k in self.cpu_procs}  # CPU seconds over measured runs
        self.round_trips = 0

    def _cpu(self) -> dict[str, float]:
        out = {}
        for k, proc in self.cpu_procs.items():
            t = proc.cpu_times()
            out[k] = t.user + t.system
        return out

    def throughput(self, n: int, window: int, record: bool = True) -> float:
        before = self._cpu()
        self.conn.send(("throughput", n, window))
        _, done, elapsed = _expect(self.conn, f"{self.name} throughput", PHASE_TIMEOUT)
        after = self._cpu()
        if record:
            self.round_trips += done
            for k in self.cpu_s:
                self.cpu_s[k] += after[k] - before[k]
        return done / elapsed  # round trips/s

    def cpu_us(self) -> dict[str, float]:
        """CPU microseconds per routed message (middle) and per round trip (clients)."""
        rt = max(1, self.round_trips)
        return {"middle_per_routed_msg": round(self.cpu_s["middle"] / (2 * rt) * 1e6, 2),
                "agent_per_round_trip": round(self.cpu_s["agent"] / rt * 1e6, 2),
                "service_per_round_trip": round(self.cpu_s["service"] / rt * 1e6, 2)}

    def latency(self, k: int, warmup: int) -> list[int]:
        self.conn.send(("latency", k, warmup))
        return _expect(self.conn, f"{self.name} latency", PHASE_TIMEOUT)[1]

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass


def _percentile(sorted_ns: list[int], q: float) -> float:
    idx = min(len(sorted_ns) - 1, max(0, round(q / 100 * len(sorted_ns)) - 1))
    return sorted_ns[idx] / 1000.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    procs: list[Any] = []  # multiprocessing children, killed by pid in finally
    hub_proc: subprocess.Popen[str] | None = None
    hub_err = tempfile.TemporaryFile(mode="w+")
    topologies: list[Topology] = []
    busy_before = psutil.cpu_percent(interval=0.5)  # other work on the machine, in %
    try:
        hub_proc, hub_endpoint = _start_hub(hub_err)
        fwd_parent, fwd_child = ctx.Pipe()
        fwd = ctx.Process(target=_forwarder_main, args=(fwd_child,), daemon=True)
        fwd.start()
        procs.append(fwd)
        bare_endpoint = _expect(fwd_parent, "bare forwarder ready")[1]

        hub = Topology("hub", hub_endpoint, hub_proc.pid, ctx, procs)
        bare = Topology("bare", bare_endpoint, fwd.pid, ctx, procs)
        topologies = [hub, bare]
        if not args.no_raw:
            topologies.append(Topology("raw", bare_endpoint, fwd.pid, ctx, procs))
        names = [t.name for t in topologies]

        warm = min(args.messages, 2000)
        for t in topologies:
            t.throughput(warm, args.window, record=False)

        # rounds: every topology once per round, starting topology rotated; the ratio is
        # the median of the per-round hub/bare ratios (paired, so drift from other load on
        # the machine cancels better than comparing medians taken at different times)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeat):
            order = topologies[r % len(topologies):] + topologies[:r % len(topologies)]
            for t in order:
                rates[t.name].append(t.throughput(args.messages, args.window))

        lat: dict[str, list[int]] = {}
        for t in topologies:
            lat[t.name] = sorted(t.latency(args.latency_samples, min(500, args.latency_samples)))

        result: dict[str, Any] = {
            "config": {"messages": args.messages, "window": args.window,
                       "latency_samples": args.latency_samples, "repeat": args.repeat,
                       "cpus": os.cpu_count()},
            "units": {"round_trips_per_s": "agent->service->agent round trips per second",
                      "routed_msgs_per_s": "messages through the middle process per second "
                                           "(= 2 x round trips)",
                      "latency": "microseconds per round trip, one in flight",
                      "cpu_us": "CPU time (user+sys) during the throughput runs: middle "
                                "process per routed message, clients per round trip"},
        }
        topo = {t.name: t for t in topologies}
        for name in names:
            rt = statistics.median(rates[name])
            result[name] = {
                "round_trips_per_s": round(rt, 1),
                "routed_msgs_per_s": round(2 * rt, 1),
                "runs_round_trips_per_s": [round(x, 1) for x in rates[name]],
                "p50_us": round(_percentile(lat[name], 50), 1),
                "p99_us": round(_percentile(lat[name], 99), 1),
                "cpu_us": topo[name].cpu_us(),
            }
        ratio = statistics.median(h / b for h, b in zip(rates["hub"], rates["bare"]))
        result["ratio"] = round(ratio, 3)
        result["ratio_of_medians"] = round(
            result["hub"]["round_trips_per_s"] / result["bare"]["round_trips_per_s"], 3)
        result["cpu_busy_before_pct"] = busy_before
        result["target"] = TARGET_RATIO
        result["pass"] = ratio >= TARGET_RATIO
        result["middle_cpu_ratio_bare_over_hub"] = round(
            result["bare"]["cpu_us"]["middle_per_routed_msg"]
            / result["hub"]["cpu_us"]["middle_per_routed_msg"], 3)
        if "raw" in result:
            result["ratio_hub_over_raw"] = round(
                result["hub"]["round_trips_per_s"] / result["raw"]["round_trips_per_s"], 3)
        if hub_proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {hub_proc.returncode} during the run")
        return result
    except BaseException:
        hub_err.seek(0)
        tail = hub_err.read()[-4000:]
        if tail:
            print(f"--- hub stderr (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for t in topologies:
            t.stop()
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.kill()  # SIGKILL to this child's pid
        for p in procs:
            p.join(5)
        if hub_proc is not None and hub_proc.poll() is None:
            hub_proc.kill()  # by pid (Popen.kill)
            try:
                hub_proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        hub_err.close()


def _print_human(res: dict[str, Any]) -> None:
    c = res["config"]
    print(f"hub throughput benchmark: {c['messages']} round trips x {c['repeat']} runs, "
          f"window {c['window']}; latency over {c['latency_samples']} round trips; "
          f"{c['cpus']} CPUs")
    print("  round trip = agent -> middle -> service -> middle -> agent (task.result / "
          "task.result_ack)")
    print("  hub  = the real hub process; clients use the real codec")
    print("  bare = pyzmq ROUTER forwarding by a destination frame; the SAME client codec work")
    if "raw" in res:
        print("  raw  = the bare forwarder with no client codec (pre-encoded frames echoed; "
              "context only)")
    print("  routed msgs/s = 2 x round trips/s (messages passing the middle process)")
    if res["cpu_busy_before_pct"] > 20:
        print(f"  note: the CPUs were {res['cpu_busy_before_pct']:.0f}% busy before the run - "
              "other work on this machine skews the figures")
    print()
    print(f"  {'middle':<6} {'round trips/s':>14} {'routed msgs/s':>14} "
          f"{'p50 us':>9} {'p99 us':>9}   runs (round trips/s)")
    names = [n for n in ("hub", "bare", "raw") if n in res]
    for name in names:
        r = res[name]
        runs = ", ".join(f"{x:.0f}" for x in r["runs_round_trips_per_s"])
        print(f"  {name:<6} {r['round_trips_per_s']:>14.0f} {r['routed_msgs_per_s']:>14.0f} "
              f"{r['p50_us']:>9.1f} {r['p99_us']:>9.1f}   {runs}")
    print()
    print("  CPU us (user+sys) during throughput runs: middle per routed msg | agent, service "
          "per round trip")
    for name in names:
        u = res[name]["cpu_us"]
        print(f"  {name:<6} middle {u['middle_per_routed_msg']:>6.1f}   agent "
              f"{u['agent_per_round_trip']:>6.1f}   service {u['service_per_round_trip']:>6.1f}")
    print(f"  middle CPU per routed msg, bare/hub = {res['middle_cpu_ratio_bare_over_hub']:.2f} "
          "(the hub's own efficiency; 1.00 = as cheap as the bare forwarder)")
    if "raw" in res:
        print(f"  throughput hub/raw = {res['ratio_hub_over_raw']:.2f} (informational)")
    print()
    verdict = "PASS" if res["pass"] else "FAIL"
    print(f"  throughput ratio hub/bare = {res['ratio']:.2f} (median of per-round ratios; "
          f"target >= {res['target']:.2f}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=12_000,
                   help="round trips per throughput run (default 12000)")
    p.add_argument("--window", type=int, default=200,
                   help="requests in flight during throughput runs (default 200)")
    p.add_argument("--latency-samples", type=int, default=5_000,
                   help="sequential round trips for p50/p99 (default 5000)")
    p.add_argument("--repeat", type=int, default=5,
                   help="throughput rounds (each topology once per round, interleaved); "
                        "medians are reported (default 5)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if hub/bare throughput < target")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-raw", action="store_true",
                   help="skip the informational raw row (bare forwarder, no client codec)")
    args = p.parse_args(argv)
    if min(args.messages, args.window, args.latency_samples, args.repeat) < 1:
        p.error("--messages, --window, --latency-samples and --repeat must be >= 1")

    def _terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # run()'s finally kills the children

    signal.signal(signal.SIGTERM, _terminate)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_human(res)
    return 1 if args.check and not res["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
