"""What keeps every session ending and no work lost to the system's own moves, mixed into
the Orchestrator: attempts of agents that went away run again (bounded), work no agent
can take is reported and ended or moved a tier up, deadlines cancel what is left, a
restarted agent's forgotten attempts are caught, and a database file deleted or replaced
under the running service stops it accepting work."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from protocols import ErrorCode, Message, ProtocolError
from protocols.events import TaskEvent, task_topic
from protocols.peer import PeerInfo
from protocols.task import TaskCancel, TaskWaiting
from services.orchestrator.report import session_report
from services.orchestrator.store import TaskRow

TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")


class Safeguards:
    """Mixin for services.orchestrator.service.Orchestrator (uses its store, config, log,
    metrics, clock, events, workflow, move, schedule, finish_session, _release,
    _cancel_tasks and _any_accepted)."""

    def check_store(self) -> str:
        """The reason no work may be accepted ("" while the database is sound). A deleted
        or replaced database file would take every later write with it unseen; the
        orchestrator refuses work instead (agents keep their results until it is back)."""
        if not self.store_problem:
            problem = self.store.problem()
            if problem:
                self.store_problem = problem
                self.metrics.store_ok.set(0)
                self.log.error("store.lost", problem=problem,
                               hint="put the database file back and restart the orchestrator")
        return self.store_problem

    def _guarded(self, handler: Callable[[Message], Any]) -> Callable[[Message], Any]:
        async def guarded(msg: Message) -> Any:
            if self.check_store():
                raise ProtocolError(ErrorCode.UNAVAILABLE,
                                    f"the orchestrator accepts no work: {self.store_problem}; "
                                    "restart it once the file is back")
            return await handler(msg)
        return guarded

    def _deadline_passed(self, sid: str) -> None:
        row = self.store.session(sid)
        request = json.loads(row["request"])
        left = [t for t in self.store.tasks(sid) if t.state not in TERMINAL]
        reason = f"the session's deadline of {request.get('deadline_s', 0):g}s passed"
        self.store.record(sid, "deadline", detail=f"{reason}; cancelling {len(left)} task(s)")
        self._cancel_tasks(sid, reason)
        names = ", ".join(t.key or t.title for t in left[:10])
        detail = f"{reason}; not done: {names}" if left else reason
        self.finish_session(sid, "partial" if self._any_accepted(sid) else "failed",
                            detail[:500], session_report(self.store, sid))

    async def on_waiting(self, msg: Message) -> None:
        """The distributor says no agent could take the queued attempt (or one can again)."""
        body = msg.body
        assert isinstance(body, TaskWaiting)
        task = self.store.task(body.task_id)
        if task is None or task.attempt_id != body.attempt_id or task.state != "queued":
            return None
        waiting = task.meta.get("waiting") or {}
        if body.reason == waiting.get("reason", ""):
            return None
        if body.reason:
            meta = {**task.meta, "waiting": {"reason": body.reason,
                                             "since": waiting.get("since") or self.clock()}}
            self.log.warning("task.waiting", task=task.id, role=task.role, reason=body.reason)
        else:
            meta = {k: v for k, v in task.meta.items() if k != "waiting"}
        self.store.update_task(task, meta=meta)
        self.store.record(task.session_id, "waiting" if body.reason else "waiting_over",
                          task.id, task.attempt_id, body.reason or "an agent can take it now")
        self.events.publish(task_topic("waiting"), TaskEvent(
            session_id=task.session_id, task_id=task.id, attempt_id=task.attempt_id,
            state=task.state, prev_state=task.state, detail=body.reason))
        return None

    def _unassignable(self, task: TaskRow, now: float) -> None:
        """Nobody could take ``task`` for unassignable_timeout: fail it with the reason, or
        run it one tier up (orchestrator.on_unassignable)."""
        waiting = task.meta["waiting"]
        why = f"no agent could take it for {now - waiting['since']:.0f}s: {waiting['reason']}"
        self._release(task, withdraw=True)
        meta = {k: v for k, v in task.meta.items() if k != "waiting"}
        ladder = self.workflow.template(task.session_id).escalation
        up = ladder[ladder.index(task.role) + 1:] if task.role in ladder else []
        if self.config.orchestrator.on_unassignable == "next_tier" and up:
            meta["attempt_base"] = meta.get("attempt_base", 0) + 1
            meta["degraded"] = f"{task.role} -> {up[0]}"
            self.store.record(task.session_id, "degraded", task.id, task.attempt_id,
                              f"{why}; running it as {up[0]}")
            self.move(task, "ready", f"{why}; running it as {up[0]}"[:500], role=up[0],
                      tier=ladder.index(up[0]), ready_at=0, meta=meta)
            return
        meta["not_run"] = why
        self.move(task, "failed", why[:500], meta=meta)
        self.workflow.on_final(task)

    def _run_again(self, task: TaskRow, why: str, lost: dict[str, Any] | None = None,
                   **fields: Any) -> None:
        """The attempt's agent went away (stopped, restarted, lost): queue a new attempt at
        once, without using up a retry; past ``max_interruptions`` the task fails."""
        n = task.meta.get("interruptions", 0) + 1
        limit = self.config.orchestrator.max_interruptions
        self.log.warning("task.interrupted", task=task.id, agent=task.agent_id, n=n, why=why)
        if n > limit:
            self.move(task, "failed", f"{why}; its agents went away {n} times "
                      f"(orchestrator.max_interruptions = {limit})"[:500], **fields)
            self.workflow.on_final(task)
            return
        meta = {**task.meta, "interruptions": n,
                "attempt_base": task.meta.get("attempt_base", 0) + 1, "lost": lost or {}}
        self.move(task, "ready", f"run again: {why}"[:500], agent_id="", ready_at=0,
                  meta=meta, **fields)

    async def on_agents_lost(self, names: set[str]) -> None:
        """Agents gone (hub event or reconciliation): their attempts are lost; re-queue."""
        requeued = False
        for task in self.store.tasks(states=("assigned", "running")):
            if task.agent_id not in names:
                continue
            self.metrics.lost_attempts.inc()
            self.store.set_attempt(task.attempt_id, state="lost", ended_at=self.clock())
            self._release(task, outcome="lost")
            # kept in mind: the agent may come back (a partition, a stopped host) with it
            lost = {"attempt": task.attempt_id, "agent": task.agent_id, "n": task.attempt}
            self._run_again(task, f"agent {task.agent_id} lost", lost=lost)
            requeued = True
        if requeued:
            self.schedule()

    def _keep_lost(self, task: TaskRow, attempt_id: str, agent_id: str, why: str,
                   done: bool = False) -> bool:
        """The agent of ``task``'s lost attempt came back with its result: if the re-run has
        reached no agent yet, or the lost attempt's work is ``done`` (succeeded) while the
        re-run still runs, keep the lost attempt, withdraw the re-run (stopping it on its
        agent), and return True (the work is not done twice)."""
        lost = task.meta.get("lost") or {}
        if lost.get("attempt") != attempt_id or lost.get("agent") != agent_id:
            return False
        row = self.store.attempt(attempt_id)
        if row is None or row["state"] != "lost":
            return False
        if task.state == "queued":
            rerun = self.store.attempt(task.attempt_id)
            if rerun is None or rerun["state"] != "queued":
                return False
            self._release(task, withdraw=True)
            self.store.set_attempt(task.attempt_id, state="withdrawn", ended_at=self.clock())
            withdrawn = f"; attempt {task.attempt} withdrawn"
        elif task.state == "ready" and task.attempt_id == attempt_id:
            withdrawn = ""
        elif task.state in ("assigned", "running") and done:
            # the re-run runs already, but the work it would do again is done: it stops
            rerun_agent = task.agent_id
            self._release(task, withdraw=True)
            self.store.set_attempt(task.attempt_id, state="withdrawn", ended_at=self.clock())
            if rerun_agent:
                self._stop_withdrawn(task, task.attempt_id, rerun_agent)
            withdrawn = f"; attempt {task.attempt} withdrawn"
            withdrawn += f" (stopped on {rerun_agent})" if rerun_agent else ""
        else:
            return False
        meta = {k: v for k, v in task.meta.items() if k not in ("lost", "waiting")}
        meta["interruptions"] = max(0, meta.get("interruptions", 1) - 1)
        meta["attempt_base"] = max(0, meta.get("attempt_base", 1) - 1)
        self.store.set_attempt(attempt_id, state="running", ended_at=0)
        self.metrics.kept_attempts.inc()
        self.log.info("attempt.kept", task=task.id, attempt=attempt_id, agent=agent_id, why=why)
        self.move(task, "running", f"agent {agent_id} came back: {why}; attempt {lost['n']} "
                  f"goes on{withdrawn}"[:500], attempt_id=attempt_id, attempt=lost["n"],
                  agent_id=agent_id, meta=meta)
        return True

    def _stop_withdrawn(self, task: TaskRow, attempt_id: str, agent_id: str) -> None:
        """An agent took an attempt that is no longer the task's (withdrawn, or lost and run
        again elsewhere): stop it, nobody would use its result."""
        row = self.store.attempt(attempt_id)
        if row is None or row["task_id"] != task.id or row["state"] not in ("withdrawn", "lost"):
            return
        self.metrics.duplicates_stopped.inc()
        self.log.warning("attempt.superseded", task=task.id, attempt=attempt_id, agent=agent_id)
        self.peer.send(agent_id, TaskCancel(task_id=task.id, attempt_id=attempt_id,
                                            reason="superseded: another attempt of the "
                                                   "task is the current one"))

    def check_returned(self, alive: dict[str, PeerInfo], tasks: list[TaskRow]) -> None:
        """Agents back from a partition still running an attempt that was declared lost,
        while its re-run runs on another agent: stop it (it would run twice). (Whether to
        keep it instead is decided by its result, which names its attempt: a heartbeat names
        only the task, and a restarted agent of the same name may be running the re-run.)"""
        for task in tasks:  # those that remember a lost attempt
            lost = task.meta.get("lost") or {}
            agent = alive.get(lost.get("agent", ""))
            if agent is None or task.id not in agent.running:
                continue
            if task.state in ("assigned", "running") and task.agent_id != lost["agent"]:
                self._stop_withdrawn(task, lost["attempt"], lost["agent"])
                self.store.update_task(task, meta={k: v for k, v in task.meta.items()
                                                   if k != "lost"})

    def _forgotten(self, task: TaskRow, agent: PeerInfo) -> bool:
        """The agent holding ``task`` is a new process under the same name (a restart the
        hub's agent.lost event did not reach us for): it registered after the attempt was
        handed over, has had time to heartbeat and to resend any result it kept, and does
        not report the task as running."""
        settle = (2 * self.config.orchestrator.result_resend_interval
                  + 2 * self.config.communication.heartbeat_interval)
        return (agent.registered_at > task.updated_at and task.id not in agent.running
                and time.time() - agent.registered_at > settle)
