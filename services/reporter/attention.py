"""What to tell people, read from the event stream: a session ended (succeeded, failed,
partial, cancelled), or a running one needs someone — its budget is spent, a task of it
waits for an agent nobody runs, or nothing happened in it for ``stalled_after`` seconds.
Each reason is told once per session (a stall again after new activity)."""

from __future__ import annotations

import time
from typing import Callable

from protocols import Message
from protocols.events import SessionEvent, TaskEvent
from protocols.task import TaskProgress
from services.reporter.notify import Notification

ENDED = ("succeeded", "failed", "partial", "cancelled")
ATTENTION_TOPIC = "session.attention"


class Attention:
    def __init__(self, notify: Callable[[Notification], None], stalled_after: float,
                 clock: Callable[[], float] = time.time):
        self.notify = notify
        self.stalled_after = stalled_after
        self.clock = clock
        self.last: dict[str, float] = {}  # running session -> when something last happened
        self.told: dict[str, set[str]] = {}  # running session -> reasons already told
        self.ended: set[str] = set()

    def on_event(self, topic: str, msg: Message) -> None:
        body = msg.body
        if isinstance(body, SessionEvent):
            sid = body.session_id
            if topic == ATTENTION_TOPIC:
                self._attention(sid, "budget", body.detail)
            elif body.state in ENDED:
                self._ended(sid, body.state, body.detail)
            else:
                self._active(sid)
        elif isinstance(body, TaskEvent):
            self._active(body.session_id)
            if topic == "task.waiting" and body.detail:
                self._attention(body.session_id, "unassignable",
                                f"task {body.task_id} waits: {body.detail}")
        elif isinstance(body, TaskProgress):  # a long task that streams is not stalled
            self._active(body.session_id)

    def seed(self, running: list[str]) -> None:
        """Running sessions the orchestrator lists (this reporter may have started after
        their last event): watched from now on."""
        now = self.clock()
        for sid in running:
            if sid not in self.ended:
                self.last.setdefault(sid, now)

    def check(self) -> None:
        """Tell about sessions in which nothing happened for too long."""
        now = self.clock()
        for sid, last in list(self.last.items()):
            idle = now - last
            if idle >= self.stalled_after:
                self._attention(sid, "stalled", f"nothing happened for {idle / 60:.0f} min "
                                "(no task started, ended or reported progress)")

    def _active(self, sid: str) -> None:
        if sid in self.ended:
            return
        self.last[sid] = self.clock()
        self.told.get(sid, set()).discard("stalled")

    def _ended(self, sid: str, state: str, detail: str) -> None:
        self.last.pop(sid, None)
        self.told.pop(sid, None)
        if sid in self.ended:
            return
        self.ended.add(sid)
        if len(self.ended) > 10_000:  # only to drop a repeated end event
            self.ended = {sid}
        self.notify(Notification(state, sid, f"session {sid} {state}: {detail}"[:300],
                                 detail=detail))

    def _attention(self, sid: str, reason: str, detail: str) -> None:
        if sid in self.ended:
            return
        told = self.told.setdefault(sid, set())
        if reason in told:
            return
        told.add(reason)
        self.notify(Notification("needs_attention", sid,
                                 f"session {sid} needs attention ({reason}): {detail}"[:300],
                                 detail=detail, reason=reason))
