"""`ccaa batch FILE`: submit many commands at once (one transaction per 1,000) and,
with --wait, follow them all to their end.

Each non-empty line of FILE that does not start with ``#`` is one command: plain text
(the command's text; the type, repository and role come from the flags), or a JSON
object with the fields of ``command.submit`` (``text``, and optionally ``repo``,
``type``, ``role``, ``priority``, ``timeout_s``, ``budget_usd``, ...), the flags giving
the defaults. ``-`` reads standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Iterable

from pydantic import ValidationError

from libs.client import BatchRefused, BusClient
from libs.config import ConfigError, SystemConfig
from libs.events import EventSubscriber
from libs.peer import RequestFailed, RequestTimeout
from services.cli import exits, interrupt
from services.cli.progress import Counter
from protocols import Message
from protocols.command import (CommandStatus, CommandSubmit, CommandType,
                               TERMINAL_SESSION_STATES)

#: seconds without news before the sessions still open are asked for directly
POLL_AFTER = 5.0
#: status requests in flight while polling
POLL_CONCURRENCY = 20


def add_parser(sub: Any, config_args: Any) -> None:
    p = sub.add_parser("batch", help="submit many commands at once (one per line of a file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_args(p)
    p.add_argument("file", help="one command per line (text or JSON); - for standard input")
    p.add_argument("--repo", default=".", help="repository of plain-text lines (default: .)")
    p.add_argument("--type", type=str.upper, choices=[t.value for t in CommandType],
                   help="command type of plain-text lines (default: classified from the text)")
    p.add_argument("--role", default="worker", help="role that runs them (default: worker)")
    p.add_argument("--priority", type=int, default=0, help="-100..100; higher runs first")
    p.add_argument("--task-timeout", type=float, help="seconds one attempt may run")
    p.add_argument("--wait", action="store_true", help="wait until every session has ended")
    p.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (the session ids; with --wait, their states)")


def read_commands(lines: Iterable[str], args: argparse.Namespace) -> list[CommandSubmit]:
    """The commands ``lines`` hold; ConfigError names the first line that is not one."""
    defaults: dict[str, Any] = {"repo": os.path.abspath(args.repo), "type": args.type,
                                "role": args.role, "priority": args.priority,
                                "timeout_s": args.task_timeout}
    commands = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                fields = json.loads(line)
                if not isinstance(fields, dict):
                    raise ValueError("not a JSON object")
                if "repo" in fields and isinstance(fields["repo"], str):
                    fields["repo"] = os.path.abspath(fields["repo"])
                commands.append(CommandSubmit(**{**defaults, **fields}))
            else:
                commands.append(CommandSubmit(**defaults, text=line))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())
            raise ConfigError(f"line {n}: {problems}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"line {n}: {exc}") from None
    if not commands:
        raise ConfigError("no commands in the input (empty lines and # comments are skipped)")
    return commands


class BatchWaiter:
    """Counts the sessions' ends from events; asks for the open ones after a silence."""

    def __init__(self, stream=None, live: bool | None = None):
        self.states: dict[str, str] = {}  # session id -> terminal state
        self.wanted: set[str] = set()
        self.early: dict[str, str] = {}  # ends heard before the ids were known
        self.stream = stream
        self.live = live  # a bar (default: when the stream is a terminal) or lines
        self._news = asyncio.Event()

    def on_event(self, topic: str, msg: Message) -> None:
        sid = getattr(msg.body, "session_id", "")
        state = topic.split(".", 1)[-1]
        if state not in {s.value for s in TERMINAL_SESSION_STATES}:
            return
        if sid in self.wanted:
            self.states.setdefault(sid, state)
            self._news.set()
        else:
            self.early[sid] = state

    def expect(self, ids: list[str]) -> None:
        self.wanted.update(ids)
        for sid in ids:
            if sid in self.early:
                self.states.setdefault(sid, self.early.pop(sid))
        self.early.clear()

    async def _poll(self, bus: BusClient) -> None:
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(sid: str) -> None:
            async with gate:
                try:
                    reply = await bus.request("orchestrator", CommandStatus(session_id=sid))
                except (RequestFailed, RequestTimeout):
                    return
                state = reply.body.session.state  # type: ignore[attr-defined]
                if state in TERMINAL_SESSION_STATES:
                    self.states.setdefault(sid, state.value)
        await asyncio.gather(*(one(s) for s in self.wanted - set(self.states)))

    async def wait(self, bus: BusClient, timeout: float | None) -> bool:
        """True once every session ended; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = Counter("ended", len(self.wanted), self.stream, self.live)
        try:
            while len(self.states) < len(self.wanted):
                shown.update(len(self.states), self.summary())
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._news.clear()
                try:
                    await asyncio.wait_for(self._news.wait(),
                                           POLL_AFTER if left is None else min(POLL_AFTER, left))
                except asyncio.TimeoutError:
                    await self._poll(bus)
            return True
        finally:
            shown.close(len(self.states), self.summary())

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for state in self.states.values():
            counts[state] = counts.get(state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet"


def cmd_batch(args: argparse.Namespace, config: SystemConfig) -> int:
    if args.file == "-":
        commands = read_commands(sys.stdin, args)
    else:
        try:
            with open(args.file, encoding="utf-8") as f:
                commands = read_commands(f, args)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None

    async def go() -> int:
        waiter = BatchWaiter()
        sub = None
        if args.wait:  # before submitting, so no end is missed
            sub = EventSubscriber(config.communication.sub(), ["session."], waiter.on_event)
            sub.start()
        try:
            async with BusClient(config.communication) as bus:
                try:
                    accepted = await bus.submit_many(commands)
                except BatchRefused as exc:
                    for acc in exc.accepted:
                        print(acc.session_id)
                    print(f"ccaa: {len(exc.accepted)} of {len(commands)} accepted, then "
                          f"refused: {exc.error}", file=sys.stderr)
                    return exits.REFUSED
                ids = [a.session_id for a in accepted]
                if not args.json:
                    print("\n".join(ids))
                print(f"{len(ids)} session(s) accepted", file=sys.stderr)
                if not args.wait:
                    if args.json:
                        print(json.dumps({"sessions": ids}))
                    return 0
                interrupt.going_on(f"the {len(ids)} session(s) go on: see them with `ccaa "
                                   "sessions`, stop one with `ccaa cancel SESSION`")
                waiter.expect(ids)
                done = await waiter.wait(bus, args.wait_timeout)
        finally:
            if sub is not None:
                await sub.close()
        ok = sum(1 for s in waiter.states.values() if s == "succeeded")
        if args.json:
            print(json.dumps({"sessions": ids, "states": waiter.states, "all_ended": done}))
        print(f"{len(waiter.states)}/{len(ids)} ended: {waiter.summary()}"
              + ("" if done else f" (gave up waiting after {args.wait_timeout:g}s)"),
              file=sys.stderr)
        if not done:
            return exits.WAIT_TIMEOUT
        return exits.OK if ok == len(ids) else exits.NOT_SUCCEEDED

    return asyncio.run(go())
