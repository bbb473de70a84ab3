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
from services.cli import orphans, sample_repo, stack, views
from services.cli.session_view import SessionFollower

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "model_server" / "scripts"

#: the commands the demo submits (the offline script answers the prompts they lead to)
DEMO_COMMANDS = [
    (CommandType.ANALYZE_PROJECT,
     "Analyse the calc package: its structure, how to test it, and its risks."),
    (CommandType.IMPLEMENT_FEATURE,
     "Add multiply(a, b) and divide(a, b) to calc, each in a module of its own with pytest "
     "tests (divide must raise ZeroDivisionError for b == 0), and export both from the "
     "package."),
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

[agent_hierarchy.architect]
count = 1
executor = "claude"
model = "opus"
max_turns = 20
disallowed_tools = ["Write", "Edit", "Bash"]

[agent_hierarchy.manager]
count = 1
executor = "claude"
model = "opus"
max_turns = 20
allowed_tools = ["Bash(python -m pytest *)", "Bash(git merge *)", "Bash(git add *)", "Bash(git commit *)"]

[agent_hierarchy.worker]
count = {workers}
executor = "claude"
model = "sonnet"
max_turns = 30
allowed_tools = ["Bash(python -m pytest *)", "Bash(python3 -m pytest *)"]

[agent_hierarchy.utility]
count = 1
executor = "command"
"""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def start_model_server(workdir: Path, run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The scripted model server, marked as started beside the stack in ``run_dir``:
    `ccaa down` stops it with the services when the demo leaves them running."""
    scripts = sorted(SCRIPTS_DIR.glob("*.yaml"))
    if not scripts:
        raise SystemExit(f"ccaa demo: no demo scripts in {SCRIPTS_DIR}")
    args = [sys.executable, "-m", "services.model_server", "--record",
            str(workdir / "model-requests.jsonl")]
    for script in scripts:
        args += ["--script", str(script)]
    log = open(workdir / "model-server.log", "ab")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                            cwd=stack.project_root(),
                            env=dict(os.environ, **{orphans.BESIDE_ENV: str(run_dir)}))
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
    ok = bool(finals)
    for final in finals:
        print()
        print(views.show(final))
        ok = ok and final.session.state.value == "succeeded"
        for t in final.tasks:
            data = t.result.get("data") or {}
            if t.kind == "work" and data.get("branch"):
                print(f"  {t.key:<10} {data['branch']} @ {str(data.get('commit', ''))[:12]} "
                      f"({data.get('num_turns', '-')} turns, claude session "
                      f"{str(data.get('session_id', '-'))[:8]})")
        branch = (final.session.report or {}).get("branch")
        if branch:
            print(f"\nthe merged result, branch {branch}:")
            print(sample_repo.git(repo, "log", "--oneline", "--graph", branch).rstrip())
            print(sample_repo.git(repo, "diff", "--stat", f"{final.session.base_commit}..{branch}")
                  .rstrip())
    print("\nbranches in the sample repository")
    print(sample_repo.git(repo, "branch", "--list", "ccaa/*", "-v").rstrip() or "  (none)")
    return ok


def demo(workdir: Path, live: bool, workers: int, keep: bool, timeout: float) -> int:
    # SIGTERM/SIGHUP end the demo like Ctrl-C: through the clean-up below
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
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
        server, url = start_model_server(workdir, stack.run_dir(config))
        env["CCAA_MODEL_BASE_URL"] = url
        print(f"scripted model server at {url} (offline; --live uses the real API)")
    ok = came_up = False
    dashboard = ""
    try:
        reply = stack.up(config, str(config_file), env, timeout=60,
                         progress=lambda line: _say(f"  ... {line}"))
        came_up = True
        agents = [f"{p.name} ({p.role})" for p in reply.peers if p.kind.value == "agent"]
        print(f"services up; {len(agents)} agents: {', '.join(agents)}")
        reporter = next((p for p in reply.peers if p.name == "reporter"), None)
        if reporter is not None and reporter.metrics_url:
            dashboard = reporter.metrics_url.removesuffix("metrics")
            print(f"dashboard at {dashboard}")
        finals = asyncio.run(run_sessions(config, repo, timeout * 3))
        ok = show_results(repo, finals)
    finally:
        if keep and came_up:  # leave the stack running
            _kept(config_file, dashboard)
        else:
            try:
                stack.down(config)
                _say("services stopped")
            finally:
                if server is not None:
                    stop_process(server)
    return 0 if ok else 1


def _kept(config_file: Path, dashboard: str) -> None:
    """--keep: the services (and the model server) go on; say how to reach and stop them."""
    _say("\nthe services are still running (--keep), with this demo's configuration:")
    _say(f"  ccaa status --config {config_file}")
    _say(f"  export CCAA_CONFIG={config_file}   # then plain 'ccaa status', 'ccaa submit', ...")
    if dashboard:
        _say(f"  dashboard: {dashboard}")
    _say(f"  ccaa down --config {config_file}   # stops them all, the model server too")


def _say(line: str) -> None:
    """Print, unless stdout is gone (a closed pipe must not stop the clean-up)."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, OSError):
        pass
