"""What one agent needs in memory: an idle agent process, and the peak of an agent's whole
process tree while its real Claude Code CLI runs a task (tools included).

The CLI runs offline against the scripted model server (Write, then Edit, then a final
answer), as the claude executor starts it; the figures set ``resources.agent_memory_mb``,
which auto-scaling uses to decide how many agents a host's memory allows.

    python benchmarks/agent_memory.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.proctrack import tree_rss_mb  # noqa: E402
from services.agent.executors.claude import resolve_cli  # noqa: E402
from services.model_server.server import ModelServer  # noqa: E402

SCRIPT = ROOT / "tests" / "model_scripts" / "model_server_write_edit.yaml"
PROMPT = "MS-WRITE-EDIT: create hello.py, then edit it"


def sample_peak(pid: int, done: threading.Event, peaks: list[float]) -> None:
    peak = 0.0
    while not done.is_set():
        peak = max(peak, tree_rss_mb(pid))
        done.wait(0.02)  # sampling period, not synchronisation
    peaks.append(peak)


def idle_agent_mb() -> float:
    """An agent process with everything it imports (the SDK included), doing nothing."""
    code = ("import services.agent.__main__, claude_agent_sdk, sys; "
            "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return tree_rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def claude_run_mb(server_url: str, cli: str) -> tuple[float, float]:
    """Peak RSS of one CLI run's process tree (MB) and its wall time (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        work = Path(tmp) / "work"
        home.mkdir()
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
        env.update(ANTHROPIC_BASE_URL=server_url, ANTHROPIC_API_KEY="offline", HOME=str(home),
                   CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
        started = time.monotonic()
        proc = subprocess.Popen([cli, "-p", PROMPT, "--output-format", "stream-json",
                                 "--verbose", "--permission-mode", "acceptEdits",
                                 "--model", "sonnet"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done, peaks = threading.Event(), []
        sampler = threading.Thread(target=sample_peak, args=(proc.pid, done, peaks))
        sampler.start()
        try:
            code = proc.wait(timeout=120)
        finally:
            done.set()
            sampler.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0 or not (work / "hello.py").exists():
            raise SystemExit(f"the CLI run failed (exit {code}); is the model script intact?")
        return peaks[0], time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="CLI runs measured (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    args = p.parse_args()
    cli = resolve_cli()
    idle = idle_agent_mb()
    peaks, walls = [], []
    for _ in range(args.runs):
        with ModelServer([str(SCRIPT)]) as server:
            peak, wall = claude_run_mb(server.url, cli)
        peaks.append(peak)
        walls.append(wall)
    need = idle + max(peaks)
    figures = {"idle_agent_mb": round(idle, 1), "claude_run_peak_mb": round(max(peaks), 1),
               "claude_run_median_mb": round(statistics.median(peaks), 1),
               "agent_while_running_mb": round(need, 1),
               "runs": args.runs, "run_seconds_median": round(statistics.median(walls), 2),
               "cli": cli}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"idle agent process           {figures['idle_agent_mb']:8.1f} MB")
        print(f"Claude Code run, peak tree   {figures['claude_run_peak_mb']:8.1f} MB "
              f"(median {figures['claude_run_median_mb']}, {args.runs} runs)")
        print(f"one agent while it runs      {figures['agent_while_running_mb']:8.1f} MB "
              "-> resources.agent_memory_mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
