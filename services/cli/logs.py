"""`ccaa logs`: a task's attempts (from the orchestrator, from any host), a service's or an
agent's log file (on this host), and with -f each followed as it grows, until the task
ends or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from libs.client import BusClient
from libs.config import SystemConfig
from libs.events import EventSubscriber
from protocols import Message
from protocols.command import TaskLogs, TaskLogsReply
from protocols.events import TaskEvent
from protocols.task import TERMINAL_TASK_STATES, TaskProgress
from services.cli import exits, interrupt

#: seconds between looks at a followed file (as `tail -f`)
FILE_POLL_SECONDS = 0.25
#: seconds between status requests while a followed task has no event
TASK_POLL_SECONDS = 2.0
#: the fields every service log line has, shown first; the rest follow as key=value
_HEAD = ("ts", "level", "service", "event")


def add_parser(sub) -> None:
    from services.cli.args import config_args

    p = sub.add_parser(
        "logs", help="a task's attempts and output, or a service's or agent's log (-f: follow)",
        description="ccaa logs TASK: a task's attempts (agent, outcome, output, figures), "
        "from the orchestrator, on any host. ccaa logs --service NAME / --agent NAME: that "
        "log file on this host (DATA_DIR/run/logs, DATA_DIR/logs/agents). -f follows: a "
        "task's live output until it ends (exit 0 if it succeeded), a file as it grows "
        "(through rotation) until Ctrl-C.")
    config_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("task_id", nargs="?", help="a task id (`ccaa show SESSION` lists them)")
    which.add_argument("--service", metavar="NAME", help="hub, commands, orchestrator, "
                       "distributor, reporter, controller or supervisord")
    which.add_argument("--agent", metavar="NAME", help="an agent started by this host's "
                       "controller (agent-ROLE-HOST-N; `ccaa status` lists them)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing as it goes on")
    p.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                   help="a file's last N lines first (default 50; 0: only what comes next)")
    p.add_argument("--json", action="store_true", help="a task: the reply as one JSON "
                   "document (with -f: one JSON line per event); a file: its raw lines")


def cmd_logs(args: argparse.Namespace, config: SystemConfig) -> int:
    if args.task_id:
        return asyncio.run(task_logs(args, config))
    path = log_path(config, service=args.service, agent=args.agent)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.log")) if path.parent.is_dir() else []
        print(f"ccaa: no log at {path}" + (f"; here: {', '.join(known)}" if known else
                                             " (is anything running on this host?)"),
              file=sys.stderr)
        return exits.REFUSED
    out = (lambda line: print(line, flush=True)) if args.json else \
        (lambda line: print(pretty(line), flush=True))
    for line in last_lines(path, args.lines):
        out(line)
    if args.follow:
        follow_file(path, out)
    return exits.OK


def log_path(config: SystemConfig, service: str | None = None,
             agent: str | None = None) -> Path:
    if agent:
        return config.data_path() / "logs" / "agents" / f"{agent}.log"
    from services.cli.stack import run_dir

    if service == "supervisord":
        return run_dir(config) / "supervisord.log"
    return run_dir(config) / "logs" / f"{service}.log"


def pretty(line: str) -> str:
    """A service's JSON log line for people: time, level, service, event, then the rest."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "event" not in record:
        return line
    head = f"{record.get('ts', '')} {record.get('level', ''):<7} " \
           f"{record.get('service', '')} {record.get('event', '')}"
    rest = " ".join(f"{k}={v if isinstance(v, str) and ' ' not in v else json.dumps(v)}"
                    for k, v in record.items() if k not in _HEAD and k != "exc")
    text = f"{head} {rest}".rstrip()
    return text + ("\n" + record["exc"] if record.get("exc") else "")


def last_lines(path: Path, n: int) -> list[str]:
    """The file's last ``n`` lines, read from its end (a log may be 10 MB)."""
    if n <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = size = f.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= n:
            start = max(0, end - 64 * 1024)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.decode(errors="replace").splitlines()
    return lines[-n:] if size else []


def follow_file(path: Path, out: Callable[[str], None],
                stop: Callable[[], bool] = lambda: False) -> None:
    """Print what is appended to ``path`` as it comes, line by line; after a rotation (the
    file renamed and made anew, or copied and truncated) from the new file's start."""
    for line in _appended(path, stop):
        out(line)


def _appended(path: Path, stop: Callable[[], bool]) -> Iterator[str]:
    f = open(path, "rb")
    f.seek(0, os.SEEK_END)
    pending = b""
    try:
        while not stop():
            chunk = f.read(64 * 1024)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
                continue
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None  # between the rename and the new file
            here = os.fstat(f.fileno())
            if now is not None and (now.st_ino != here.st_ino or now.st_size < f.tell()):
                f.close()  # rotated: the new file from its start
                f = open(path, "rb")
                pending = b""
                continue
            time.sleep(FILE_POLL_SECONDS)  # wait-ok: tail -f on a local file
    finally:
        f.close()


async def task_logs(args: argparse.Namespace, config: SystemConfig) -> int:
    from services.cli import views
    from services.cli.args import json_out

    events: asyncio.Queue[Message] = asyncio.Queue()
    sub = None
    if args.follow:  # subscribed first, so nothing between the first status and it is lost
        sub = EventSubscriber(config.communication.sub(), ["task."],
                              lambda _topic, msg: events.put_nowait(msg)
                              if getattr(msg.body, "task_id", None) == args.task_id else None)
        sub.start()
    try:
        async with BusClient(config.communication) as bus:
            reply: TaskLogsReply = (await bus.request(
                "orchestrator", TaskLogs(task_id=args.task_id))).body  # type: ignore[assignment]
            if not args.follow:
                if not json_out(args, reply):
                    print(views.logs(reply))
                return exits.OK
            if not args.json:
                print(views.logs(reply), flush=True)
            interrupt.going_on(f"task {args.task_id} goes on")
            return await follow_task(bus, args.task_id, reply, events, args.json)
    finally:
        if sub is not None:
            await sub.close()


async def follow_task(bus: BusClient, task_id: str, reply: TaskLogsReply,
                      events: asyncio.Queue[Message], as_json: bool) -> int:
    """Each progress line and state change of the task as it happens, until it ends."""
    state = reply.task.state
    while state not in TERMINAL_TASK_STATES:
        try:
            msg = await asyncio.wait_for(events.get(), TASK_POLL_SECONDS)
        except asyncio.TimeoutError:  # a missed event: the orchestrator's word
            reply = (await bus.request("orchestrator", TaskLogs(task_id=task_id))).body  # type: ignore[assignment]
            state = reply.task.state
            continue
        body = msg.body
        stamp = time.strftime("%H:%M:%S", time.localtime(msg.header.ts))
        if isinstance(body, TaskProgress):
            if as_json:
                print(json.dumps(body.model_dump(mode="json")), flush=True)
            else:
                print(f"{stamp} [{body.agent_id}] {body.kind}: {body.summary}", flush=True)
        elif isinstance(body, TaskEvent):
            if as_json:
                print(json.dumps(body.model_dump(mode="json")), flush=True)
            else:
                detail = f" ({body.detail})" if body.detail else ""
                print(f"{stamp} {body.state}{detail}", flush=True)
            state = body.state  # type: ignore[assignment]
    if not as_json:
        final = (await bus.request("orchestrator", TaskLogs(task_id=task_id))).body
        from services.cli import views

        print()
        print(views.logs(final))  # type: ignore[arg-type]
    return exits.OK if str(getattr(state, "value", state)) == "succeeded" else \
        exits.NOT_SUCCEEDED
