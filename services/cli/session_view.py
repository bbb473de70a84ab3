"""`ccaa submit --wait`: follow a session through events and status polls until it ends."""

from __future__ import annotations

import asyncio
import time

from libs.client import BusClient
from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.peer import RequestFailed, RequestTimeout
from protocols import Message
from protocols.command import CommandStatus, CommandStatusReply, TERMINAL_SESSION_STATES
from protocols.events import SessionEvent, TaskEvent
from protocols.task import TaskProgress
from services.cli import exits
from services.cli.exits import WaitTimeout
from services.cli.views import state_counts

#: the task states the compact view shows (-v shows every state and live progress)
COMPACT_STATES = frozenset({"running", "succeeded", "failed", "timed_out", "cancelled"})
#: ... and of the agents' live progress, one line per tool call (not their text or output)
COMPACT_PROGRESS = frozenset({"tool_use", "tool_error", "retry"})


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


class SessionFollower:
    """Prints each task state change once, in order, from the session's audit history
    (an event triggers an immediate status request, a timer covers missed events), until
    the session ends. Compact by default: a task's start and end, its agent's tool calls,
    and the session's own records; ``verbose`` adds every state (ready, queued, assigned)
    and all live progress (text, output lines, thinking)."""

    def __init__(self, session_id: str, out=print, poll_interval: float = 1.0,
                 verbose: bool = False):
        self.session_id = session_id
        self.out = out
        self.verbose = verbose
        self.poll_interval = poll_interval
        self.printed = 0  # history entries already printed
        self.labels: dict[str, str] = {}  # task id -> "kind:key" for readable lines
        self.final: CommandStatusReply | None = None
        self._changed = asyncio.Event()

    def on_event(self, topic: str, msg: Message) -> None:
        body = msg.body
        if getattr(body, "session_id", None) != self.session_id:
            return
        if isinstance(body, TaskProgress):
            if not self.verbose and body.kind not in COMPACT_PROGRESS:
                return
            label = self.labels.get(body.task_id, body.task_id)
            self.out(f"{_stamp()}   {label} [{body.agent_id}] {body.kind}: {body.summary}")
        elif isinstance(body, (TaskEvent, SessionEvent)):
            self._changed.set()

    def on_status(self, reply: CommandStatusReply) -> bool:
        before = self.printed
        for t in reply.tasks:
            self.labels[t.task_id] = f"{t.kind}:{t.key}" if t.key else f"{t.kind}:{t.task_id}"
        for i, h in enumerate(reply.history):
            if i < self.printed:
                continue
            self.printed = i + 1
            if h["kind"] == "task" and h["to_state"]:
                if not self.verbose and h["to_state"] not in COMPACT_STATES:
                    continue
                detail = f" ({h['detail']})" if h["detail"] else ""
                stamp = time.strftime("%H:%M:%S", time.localtime(h["ts"]))
                key = self.labels.get(h["task_id"]) or h["task_id"]
                self.out(f"{stamp} task {key} {h['to_state']}{detail}")
            elif h["kind"] != "task":
                self.out(f"{time.strftime('%H:%M:%S', time.localtime(h['ts']))} "
                         f"{h['kind']}: {h['detail']}")
                if h["kind"] == "waiting" and h["detail"].startswith("no agent with role "):
                    role = h["detail"].split()[4]
                    self.out(f"         start one with `ccaa agent --role {role}` or set "
                             f"agent_hierarchy.{role}.count")
        if self.printed != before:
            self.out(f"{_stamp()}   [{state_counts(reply.tasks)} | cost "
                     f"${reply.session.cost_usd:.4f}]")
        if reply.session.state in TERMINAL_SESSION_STATES:
            self.final = reply
            return True
        return False

    def subscribe(self, config: SystemConfig) -> EventSubscriber:
        """Subscribe early (before submitting) so the first events are not missed."""
        sub = EventSubscriber(config.communication.sub(), ["task.", "session."], self.on_event)
        sub.start()
        return sub

    async def follow(self, bus: BusClient, sub: EventSubscriber,
                     timeout: float | None) -> CommandStatusReply:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    reply = await bus.request("orchestrator",
                                              CommandStatus(session_id=self.session_id))
                    if self.on_status(reply.body):  # type: ignore[arg-type]
                        return reply.body  # type: ignore[return-value]
                except (RequestTimeout, RequestFailed) as exc:
                    self.out(f"{_stamp()} (status unavailable: {exc})")
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"session {self.session_id} still running after "
                                       f"{timeout:g}s")
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), self.poll_interval)
                except asyncio.TimeoutError:
                    pass
        finally:
            await sub.close()


def cmd_watch(args, config: SystemConfig) -> int:
    """`ccaa watch SESSION`: follow a session submitted earlier (from anywhere) to its end,
    from the start of its history; exit 0 if it succeeded."""
    from services.cli import interrupt, views
    from services.cli.args import json_out

    async def go() -> int:
        follower = SessionFollower(args.session_id, verbose=args.verbose,
                                   out=(lambda line: None) if args.json else print)
        sub = follower.subscribe(config)
        try:
            async with BusClient(config.communication) as bus:
                # an unknown session is refused here (not_found), not polled for ever
                await bus.request("orchestrator", CommandStatus(session_id=args.session_id))
                interrupt.going_on(f"session {args.session_id} goes on: stop it with "
                                   f"`ccaa cancel {args.session_id}`")
                final = await follower.follow(bus, sub, args.timeout)
        finally:
            await sub.close()
        if not json_out(args, final):
            print()
            print(views.show(final))
        return exits.OK if final.session.state.value == "succeeded" else exits.NOT_SUCCEEDED

    return asyncio.run(go())
