"""Starting ready tasks, mixed into the Orchestrator: within max_parallel_tasks overall and
each session's max_parallel and budget, in priority order, each attempt told to the
distributor in a one-way task.enqueue (bundled with the turn's other messages; an attempt
still queued after the resend interval is told again, and the distributor dedupes)."""

from __future__ import annotations

import asyncio
from typing import Any

from protocols.events import SessionEvent
from protocols.task import MAX_SUMMARY, TaskEnqueue, TaskSpec
from services.orchestrator.report import session_report
from services.orchestrator.store import TaskRow

DISTRIBUTOR = "distributor"


class Scheduling:
    """Mixin for services.orchestrator.service.Orchestrator (uses its store, config,
    clock, peer, metrics, log, move and finish_session)."""

    def schedule(self) -> None:
        """Queue ready tasks whose backoff has passed, within max_parallel_tasks overall and
        each session's max_parallel and budget: at the end of this turn of the loop if its
        writes are grouped (once for all the turn's messages, in the same transaction),
        else at once."""
        if not self.store.at_turn_end(self._schedule_at_turn_end):
            self._schedule_now()

    def _schedule_at_turn_end(self) -> None:
        try:
            with self.store.tx():
                self._schedule_now()
        except Exception as exc:  # (undone; the tasks stay ready for the next schedule)
            self.metrics.schedule_failures.inc()
            self.log.error("schedule.failed", error=repr(exc))

    def _schedule_now(self) -> None:
        """Synchronous on purpose: no other handler can interleave between reading the ready
        tasks and moving them to queued."""
        if self.store_problem:
            return
        now = self.clock()
        active = self.store.count_active()
        room = self.config.orchestrator.max_parallel_tasks - active
        sessions: dict[str, Any] = {}
        skipped: set[str] = set()  # ready tasks that cannot start now (session limits)
        more = True
        while room > 0 and more:
            # only as many ready tasks as can start are read (plus those skipped so far)
            # (rows come in order, so room + skipped rows hold room startable ones if any)
            limit = room + len(skipped)
            rows = self.store.tasks(states=("ready",), ready_by=now, limit=limit)
            more = len(rows) == limit  # fewer: these are all the ready tasks there are
            page = [t for t in rows if t.id not in skipped]
            if not page:
                break
            for task in page:
                if room <= 0:
                    break
                row = sessions.get(task.session_id) or self.store.session(task.session_id)
                sessions[task.session_id] = row
                if row["budget_usd"] is not None and row["cost_usd"] >= row["budget_usd"] \
                        and row["state"] == "running":
                    self._budget_exhausted(row)  # cancels the session's waiting tasks
                    sessions.pop(task.session_id)
                    more = True
                    break  # read the ready tasks again
                if row["state"] != "running" or (
                        row["max_parallel"]
                        and self.store.count_active(task.session_id) >= row["max_parallel"]):
                    skipped.add(task.id)
                    continue
                attempt_id = self.store.new_attempt(task)
                self.move(task, "queued", f"attempt {task.attempt}", attempt=task.attempt,
                          attempt_id=attempt_id, agent_id="", enqueued_at=now)
                room -= 1
                active += 1
                self._enqueue(task)
        self.metrics.active.set(active)

    def _budget_exhausted(self, row: Any) -> None:
        sid = row["id"]
        reason = (f"budget of ${row['budget_usd']:.2f} reached (spent ${row['cost_usd']:.4f}); "
                  "no further tasks are assigned")
        self.store.record(sid, "budget_exhausted", detail=reason)
        self.events.publish("session.attention", SessionEvent(session_id=sid, state="running",
                                                             detail=reason))
        self.log.warning("session.budget_exhausted", session=sid, cost=row["cost_usd"])
        for task in self.store.tasks(sid, states=("ready", "pending")):
            self.move(task, "cancelled", reason)
        if self.store.count_active(sid) == 0:
            self.finish_session(sid, "partial" if self._any_accepted(sid) else "failed", reason,
                                session_report(self.store, sid))

    def _any_accepted(self, sid: str) -> bool:
        return any(t.meta.get("accepted") for t in self.store.tasks(sid))

    async def _schedule_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.schedule()

    def _enqueue(self, task: TaskRow) -> None:
        session = self.store.session(task.session_id)
        base = task.base or (session["base_commit"] if session is not None else "")
        resume = task.meta.get("resume_session", "")
        # a later attempt prefers the agent (then the host) of the one before, whose result
        # is the task's last; its report stands in for a session that cannot resume
        before = task.result if task.attempt > 1 else {}
        spec = TaskSpec(task_id=task.id, attempt_id=task.attempt_id, session_id=task.session_id,
                        owner=self.peer.name, role=task.role, priority=task.priority,
                        title=task.title, prompt=task.prompt, cwd=task.cwd,
                        timeout_s=task.timeout_s, base_commit=base,
                        isolate=bool(task.isolate and base), executor=task.executor,
                        capabilities=task.meta.get("subtask", {}).get("capabilities", []),
                        resume_session=resume, prefer_agent=before.get("agent_id", ""),
                        previous_summary=str((before.get("data") or {}).get("result") or "")
                        [:MAX_SUMMARY] if resume else "")
        # told once the attempt is durable (not at all if its writes are undone)
        self.store.after_commit(lambda: self._send_enqueue(spec))

    def _send_enqueue(self, spec: TaskSpec) -> None:
        try:
            self.peer.send(DISTRIBUTOR, TaskEnqueue(task=spec))
        except ConnectionError as exc:
            # stays queued; reconcile tells the distributor again (which dedupes)
            self.log.warning("enqueue.failed", task=spec.task_id, error=str(exc))
