"""`ccaa demo`: the whole system on a sample repository, offline by default.

It creates a small git repository, starts the scripted model server (unless --live),
brings the services up under supervisord with Claude Code workers, submits commands that
run in parallel on real `claude` processes (each in its own worktree and branch), shows
their progress live, and prints the resulting branches and commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from libs.client import BusClient
from libs.config import SystemConfig, load_config
from protocols.command import CommandSubmit, CommandType
from services.cli import sample_repo, stack
from services.cli.session_view import SessionFollower

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "model_server" / "scripts"

#: the commands the demo submits; the offline scripts answer each by its distinctive words
DEMO_COMMANDS = [
    (CommandType.IMPLEMENT_FEATURE,
     "Add a multiply(a, b) function in calc/multiply.py with pytest tests in "
     "tests/test_multiply.py, then run those tests."),
    (CommandType.IMPLEMENT_FEATURE,
     "Add a divide(a, b) function in calc/divide.py that raises ZeroDivisionError on b == 0, "
     "with pytest tests in tests/test_divide.py, then run those tests."),
]

CONFIG = """\
data_dir = "{data}"

[communication]
router_endpoint = "ipc://{run}/hub.sock"
pub_endpoint = "ipc://{run}/pub.sock"
sub_endpoint = "ipc://{run}/sub.sock"
heartbeat_interval = 0.5

[orchestrator]
task_timeout = {task_timeout}
retry_attempts = 1

[metrics.ports]
hub = 0
commands = 0
orchestrator = 0
distributor = 0
controller = 0

[reporting]
http_port = 0

[agent_hierarchy.worker]
count = {workers}
executor = "claude"
model = "sonnet"
max_turns = 12
permission_mode = "acceptEdits"
allowed_tools = ["Read", "Write", "Edit", "Glob", "Grep", "Bash(python -m pytest *)", "Bash(python3 -m pytest *)"]
"""


def start_model_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    scripts = sorted(SCRIPTS_DIR.glob("demo*.yaml"))
    if not scripts:
        raise SystemExit(f"ccaa demo: no demo scripts in {SCRIPTS_DIR}")
    args = [sys.executable, "-m", "services.model_server", "--record",
            str(workdir / "model-requests.jsonl")]
    for script in scripts:
        args += ["--script", str(script)]
    log = open(workdir / "model-server.log", "ab")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                            cwd=stack.project_root())
    log.close()
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if data.get("event") == "ready":
                return proc, data["url"]
        if proc.poll() is not None:
            break
    stop_process(proc)
    raise SystemExit(f"ccaa demo: the model server did not start; see {workdir}/model-server.log")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


async def run_sessions(config: SystemConfig, repo: Path, timeout: float) -> list:
    followers: list[SessionFollower] = []
    subs = []
    finals = []
    async with BusClient(config.communication) as bus:
        for type_, text in DEMO_COMMANDS:
            follower = SessionFollower("", out=lambda line: print(line, flush=True))
            subs.append(follower.subscribe(config))
            reply = await bus.request("commands", CommandSubmit(text=text, repo=str(repo),
                                                                type=type_))
            follower.session_id = reply.body.session_id  # type: ignore[attr-defined]
            print(f"session {follower.session_id}: {text}", flush=True)
            followers.append(follower)
        results = await asyncio.gather(*(f.follow(bus, s, timeout)
                                         for f, s in zip(followers, subs)),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                print(f"ccaa demo: {r}", flush=True)
            else:
                finals.append(r)
    return finals


def show_results(repo: Path, finals: list) -> bool:
    ok = True
    print("\nresults")
    for final in finals:
        s = final.session
        print(f"  session {s.session_id} {s.state.value}")
        for t in final.tasks:
            data = t.result.get("data", {})
            cost = data.get("total_cost_usd")
            cost_text = f" cost ${cost:.4f}" if isinstance(cost, (int, float)) else ""
            print(f"    task {t.task_id} {t.state.value} on {t.agent_id or '-'}"
                  f" turns {data.get('num_turns', '-')}{cost_text}")
            if data.get("branch"):
                print(f"      branch {data['branch']} commit {data.get('commit', '-')}")
            if data.get("diff_stat"):
                for line in str(data["diff_stat"]).strip().splitlines():
                    print(f"        {line}")
        ok = ok and s.state.value == "succeeded"
    print("\nbranches in the sample repository")
    print(sample_repo.git(repo, "branch", "--list", "ccaa/*", "-v", "--no-abbrev").rstrip()
          or "  (none)")
    return ok


def demo(workdir: Path, live: bool, workers: int, keep: bool, timeout: float) -> int:
    workdir = workdir.resolve()
    run = workdir / "run"
    run.mkdir(parents=True, exist_ok=True)
    repo = workdir / "calc"
    if not (repo / ".git").exists():
        sha = sample_repo.create(repo)
        print(f"sample repository {repo} at {sha[:12]}")
    config_file = workdir / "ccaa.toml"
    config_file.write_text(CONFIG.format(data=workdir / "data", run=run, workers=workers,
                                         task_timeout=timeout))
    config = load_config(str(config_file))
    env: dict[str, str] = {}
    server = None
    if live:
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise SystemExit("ccaa demo --live needs ANTHROPIC_API_KEY")
    else:
        server, url = start_model_server(workdir)
        env["CCAA_MODEL_BASE_URL"] = url
        print(f"scripted model server at {url} (offline; --live uses the real API)")
    try:
        reply = stack.up(config, str(config_file), env, timeout=60)
        agents = [p.name for p in reply.peers if p.kind.value == "agent"]
        print(f"services up; {len(agents)} Claude Code agents: {', '.join(agents)}")
        finals = asyncio.run(run_sessions(config, repo, timeout * 3))
        ok = show_results(repo, finals)
    finally:
        if not keep:
            stack.down(config)
            print("services stopped")
        if server is not None:
            stop_process(server)
    return 0 if ok else 1
