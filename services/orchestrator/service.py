"""The orchestrator's task state machine: persist sessions and tasks, hand ready tasks to
the distributor, apply results only from the current attempt (fencing), retry with
backoff, re-queue the tasks of lost agents; the session-level logic (plans, gates,
reviews, escalation, merge) is in workflow.py.

A task (see protocols/PROTOCOL.md):
  pending -> ready -> queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
  and back to ready (a new attempt) after a failure with retries left, a lost agent, or
  when the workflow sends finished work back (gate failed, review asked for changes).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.events import EventPublisher
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import ErrorCode, Message, ProtocolError
from protocols.command import (
    CommandCancel,
    CommandStatus,
    CommandStatusReply,
    CommandType,
    SessionCreate,
    SessionCreateBatch,
    SessionList,
    SessionListReply,
    SessionState,
    TaskLogs,
    TaskLogsReply,
    SessionCounts,
    SessionCountsReply,
)
from protocols.audit import AuditQuery, AuditReply
from protocols.events import (
    SessionEvent,
    TaskEvent,
    session_topic,
    task_topic,
)
from protocols.peer import PeerKind, RegistryList
from protocols.task import (
    AgentStats,
    AgentStatsReply,
    Outcome,
    TaskAccepted,
    TaskCancel,
    TaskDispatched,
    TaskReleased,
    TaskResult,
    TaskResultAck,
    TaskWaiting,
)
from protocols.header import HUB
from services.orchestrator import queries
from services.orchestrator.metrics import OrchestratorMetrics, count_states
from services.orchestrator.audit import AuditLog
from services.orchestrator.report import session_report
from services.orchestrator.intake import GatesCache, Intake
from services.orchestrator.safeguards import TERMINAL, Safeguards
from services.orchestrator.scheduling import DISTRIBUTOR, Scheduling
from services.orchestrator.store import Step, Store, TaskRow
from services.orchestrator.transactions import AfterCommit
from services.orchestrator.templates import Template, load_templates
from services.orchestrator.workflow import Workflow

ACTIVE = ("queued", "assigned", "running")
#: task kinds whose failures are not retried (a failing gate is a verdict, not a fault)
NO_RETRY = ("gate", "final_gate")
#: attempt states that mean a result was recorded (not "lost", "queued", ...)
OUTCOMES = frozenset(o.value for o in Outcome)


class Orchestrator(Safeguards, Intake, Scheduling):
    def __init__(self, config: SystemConfig, store: Store, peer: Peer, events: EventPublisher,
                 registry: CollectorRegistry, log: EventLogger | None = None,
                 clock: Callable[[], float] = time.time,
                 templates: dict[str, Template] | None = None):
        self.config = config
        self.store = store
        self.peer = peer
        self.events = AfterCommit(events, store)
        self.log = log or get_logger("orchestrator")
        self.metrics = OrchestratorMetrics(registry, roles=config.agent_hierarchy,
                                           gates=config.gates)
        self.metrics.watch_states(store.conn, store.clock, lambda: store.commits)
        self.clock = clock
        self.templates = templates or load_templates(config.orchestrator.templates_dir)
        self._gates_cache = GatesCache(config.gates)  # see services.orchestrator.intake
        self._template_cache: dict[str, tuple[Any, str]] = {}
        self.workflow = Workflow(self)
        self.audit = AuditLog(store.conn, clock)
        store.on_rollback.append(self.audit.forget)
        self.store_problem = ""  # set for good once the database file is gone
        guarded = self._guarded
        self.handlers = {
            SessionCreate.TYPE: guarded(self.on_session_create),
            SessionCreateBatch.TYPE: guarded(self.on_session_create_batch),
            CommandStatus.TYPE: self.on_status,
            CommandCancel.TYPE: guarded(self.on_cancel),
            TaskDispatched.TYPE: guarded(self.on_dispatched),
            TaskAccepted.TYPE: guarded(self.on_accepted),
            TaskResult.TYPE: guarded(self.on_result),
            SessionList.TYPE: self.on_list,
            SessionCounts.TYPE: self.on_counts,
            TaskLogs.TYPE: self.on_logs,
            TaskWaiting.TYPE: guarded(self.on_waiting),
            AgentStats.TYPE: self.on_agent_stats,
            AuditQuery.TYPE: self.on_audit,
        }

    # ---- commands ---------------------------------------------------------------------

    async def on_status(self, msg: Message) -> CommandStatusReply:
        body = msg.body
        assert isinstance(body, CommandStatus)
        return self.status(body.session_id, body.attempts)

    def status(self, session_id: str, attempts: bool = False) -> CommandStatusReply:
        return queries.status(self.store, session_id, attempts)

    async def on_list(self, msg: Message) -> SessionListReply:
        body = msg.body
        assert isinstance(body, SessionList)
        return queries.sessions(self.store, body.limit)

    async def on_counts(self, msg: Message) -> SessionCountsReply:
        return SessionCountsReply(sessions=count_states(self.store.conn, "sessions"),
                                  tasks=count_states(self.store.conn, "tasks"))

    async def on_audit(self, msg: Message) -> AuditReply:
        body = msg.body
        assert isinstance(body, AuditQuery)
        return AuditReply(records=self.audit.query(body.since, body.session_id, body.action,
                                                   body.limit))

    def on_peer_event(self, topic: str, msg: Message) -> None:
        """Registrations, refusals and key changes from the hub, into the audit log."""
        self.audit.hub_event(msg)

    async def audit_registry(self) -> int:
        """Record the registrations the hub made before this orchestrator listened for
        them (from the registry); returns how many were missing."""
        reply = await self.peer.request(HUB, RegistryList())
        return self.audit.registry(reply.body.peers)

    async def on_logs(self, msg: Message) -> TaskLogsReply:
        body = msg.body
        assert isinstance(body, TaskLogs)
        return queries.logs(self.store, body.task_id)

    async def on_agent_stats(self, msg: Message) -> AgentStatsReply:
        body = msg.body
        assert isinstance(body, AgentStats)
        return queries.agent_stats(self.store, self.clock() - body.since_s)

    async def on_cancel(self, msg: Message) -> CommandStatusReply:
        body = msg.body
        assert isinstance(body, CommandCancel)
        row = self.store.session(body.session_id)
        if row is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {body.session_id!r}")
        if row["state"] == SessionState.RUNNING.value:
            self.audit.add("cancel", msg.header.src, session_id=body.session_id,
                           detail=body.reason)
            self._cancel_tasks(body.session_id, body.reason)
            self.finish_session(body.session_id, "cancelled", body.reason,
                                session_report(self.store, body.session_id))
        return self.status(body.session_id)

    def _cancel_tasks(self, session_id: str, reason: str) -> None:
        for task in self.store.tasks(session_id):
            if task.state in TERMINAL:
                continue
            if task.state in ("assigned", "running") and task.agent_id:
                self.peer.send(task.agent_id, TaskCancel(
                    task_id=task.id, attempt_id=task.attempt_id, reason=reason))
            if task.state in ACTIVE:
                self._release(task, withdraw=True)
            self.move(task, "cancelled", reason)

    # ---- task flow --------------------------------------------------------------------

    async def on_dispatched(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskDispatched)
        task = self.store.task(body.task_id)
        if task is None or self._stop_cancelled(task, body.attempt_id, body.agent_id):
            return None
        if task.attempt_id != body.attempt_id:
            self._stop_withdrawn(task, body.attempt_id, body.agent_id)
            return None
        if task.state != "queued":
            return None
        self.move(task, "assigned", f"to {body.agent_id}", agent_id=body.agent_id)
        self.store.set_attempt(body.attempt_id, agent_id=body.agent_id, state="assigned")
        return None

    async def on_accepted(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskAccepted)
        with self.store.tx():  # applied whole or not at all
            self._accepted(body)
        return None

    def _accepted(self, body: TaskAccepted) -> None:
        task = self.store.task(body.task_id)
        if task is None:
            return None
        if task.attempt_id != body.attempt_id:
            self._stop_withdrawn(task, body.attempt_id, body.agent_id)
            return None
        if self._stop_cancelled(task, body.attempt_id, body.agent_id):
            return None
        # the agent tells it once it has run a while (never earlier than it was queued)
        started = max(self.clock() - body.running_s, task.enqueued_at or 0.0)
        steps = self._start_steps(task, body.agent_id, started)
        if steps:
            self.move_through(task, steps)
            self.store.set_attempt(body.attempt_id, agent_id=body.agent_id, state="running")
        return None

    @staticmethod
    def _start_steps(task: TaskRow, agent_id: str, started: float) -> list[Step]:
        """The steps that record that ``agent_id`` took the task's attempt and has been
        running it since ``started`` (queued -> assigned -> running, those not recorded
        yet; task.dispatched may still be on its way). Empty: it was running already."""
        steps: list[Step] = []
        if task.state == "queued":
            steps.append(("assigned", f"to {agent_id}", started, {"agent_id": agent_id}))
        if task.state in ("queued", "assigned"):
            steps.append(("running", f"on {agent_id}", started,
                          {"agent_id": agent_id, "started_at": started}))
        return steps

    async def on_result(self, msg: Message) -> TaskResultAck:
        body = msg.body
        assert isinstance(body, TaskResult)
        with self.store.tx():  # applied whole or not at all
            return self._result(body)

    def _result(self, body: TaskResult) -> TaskResultAck:
        task = self.store.task(body.task_id)
        if task is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no task {body.task_id!r}")
        result = body.model_dump(mode="json")
        current = (task.attempt_id == body.attempt_id and task.state in ACTIVE
                   and task.agent_id in ("", body.agent_id))
        attempt = self.store.attempt(body.attempt_id)
        if not current and body.outcome not in (Outcome.INTERRUPTED, Outcome.CANCELLED) \
                and self._keep_lost(task, body.attempt_id, body.agent_id,
                                    f"its result ({body.outcome.value}) came after all",
                                    done=body.outcome == Outcome.SUCCEEDED):
            current = True
        already = attempt is not None and attempt["state"] in OUTCOMES
        if not already:
            self.store.set_attempt(body.attempt_id, state=body.outcome.value,
                                   ended_at=self.clock(), result=result, applied=int(current),
                                   agent_id=body.agent_id)  # known even if nothing else came
            self._account_cost(task, body)
            self.metrics.attempt_ended(task.role, task.kind, body.outcome, body.duration_s)
        if not current:
            if not already:
                self.metrics.stale_results.inc()
                self.store.record(task.session_id, "stale_result", task.id, body.attempt_id,
                                  f"{body.outcome.value} from {body.agent_id} (not applied)")
            return TaskResultAck(task_id=task.id, attempt_id=body.attempt_id,
                                 applied=bool(already and attempt["applied"]))
        # an attempt that ended within moments is told by its result alone (its agent
        # sends no task.accepted then); so is one whose accepted message was lost
        started = max(self.clock() - body.duration_s, task.enqueued_at or 0.0)
        start = self._start_steps(task, body.agent_id, started)
        if not body.released:  # (the agent has told the distributor itself)
            self._release(task, outcome=body.outcome.value, duration_s=body.duration_s,
                          agent_id=body.agent_id)
        self._apply(task, body, result, start)
        self.schedule()
        return TaskResultAck(task_id=task.id, attempt_id=body.attempt_id, applied=True)

    def _account_cost(self, task: TaskRow, body: TaskResult) -> None:
        cost = body.data.get("total_cost_usd")
        if isinstance(cost, (int, float)) and cost > 0:
            row = self.store.session(task.session_id)
            self.store.update_session(task.session_id, cost_usd=row["cost_usd"] + cost)
        self.metrics.spent(task.role, body.data)

    def _apply(self, task: TaskRow, body: TaskResult, result: dict[str, Any],
               start: list[Step]) -> None:
        """Move the task on by its attempt's result; ``start``: the steps to running not
        recorded yet. A success is written with them in one write; the other outcomes,
        whose handling may record more before its move, write them first."""
        outcome = body.outcome
        if start and (outcome != Outcome.SUCCEEDED or task.kind in NO_RETRY):
            self.move_through(task, start)
            start = []
        if outcome in (Outcome.INTERRUPTED, Outcome.CANCELLED):
            # the current attempt was stopped by its agent going away, not by the user (a
            # user's cancel has already ended the task, so its result is not current)
            self._run_again(task, f"agent {body.agent_id} stopped mid-run: {body.error}",
                            result=result)
            return
        if task.kind in NO_RETRY:
            verdict = self.workflow.judge_gate(task, result)
            meta = {**task.meta, "verdict": verdict.detail}
            if not verdict.available:
                meta["not_available"] = True
            self.metrics.gates.labels(
                task.meta.get("gate", "?"), "not_available" if not verdict.available
                else "passed" if verdict.passed else "failed").inc()
            self.move(task, "succeeded" if verdict.passed else "failed",
                      f"gate: {verdict.detail}"[:500], result=result, meta=meta)
        elif outcome == Outcome.SUCCEEDED:
            self.move_through(task, [*start, ("succeeded", f"on {body.agent_id}", None,
                                              {"result": result})])
        elif (body.data or {}).get("auth_failed"):
            # the agent's credentials are what failed: another attempt would fail the same
            self.store.record(task.session_id, "auth_failed", task.id, body.attempt_id,
                              body.error[:500])
            self.move(task, "failed", body.error[:500], result=result)
            # ... and so would the session's other work: end it now, saying what to fix
            self._cancel_tasks(task.session_id, "Claude Code could not authenticate")
            self.finish_session(task.session_id, "failed", body.error[:1000],
                                session_report(self.store, task.session_id))
            return
        elif task.attempt - task.meta.get("attempt_base", 0) <= self.config.orchestrator.retry_attempts:
            n = task.attempt - task.meta.get("attempt_base", 0)
            delay = self.config.orchestrator.retry_backoff * (2 ** (n - 1))
            resume = (body.data or {}).get("session_id", "") if \
                self.config.orchestrator.resume_on_retry else ""
            meta = {**task.meta, "resume_session": resume}
            self.move(task, "ready", f"retry after {outcome.value}: {body.error}"[:500],
                      result=result, ready_at=self.clock() + delay, agent_id="", meta=meta)
            self.peer.spawn(self._schedule_after(delay))
            return
        else:
            self.move(task, outcome.value, body.error[:500], result=result)
        self.workflow.on_final(task)

    async def reconcile(self) -> None:
        """Periodic: re-enqueue stale queued tasks, catch lost agents and overdue attempts."""
        if self.check_store():
            return
        now = self.clock()
        resend = max(5.0, self.config.communication.message_timeout)
        for task in self.store.tasks(states=("queued",)):
            waiting = task.meta.get("waiting")
            if waiting and now - waiting["since"] > self.config.orchestrator.unassignable_timeout:
                self._unassignable(task, now)
            elif now - task.enqueued_at > resend:
                self.store.update_task(task, enqueued_at=now)
                self._enqueue(task)
        busy = self.store.tasks(states=("assigned", "running"))
        lost = self.store.tasks_with_lost_attempts()
        if busy or lost:
            try:
                reply = await self.peer.request("hub", RegistryList(kind=PeerKind.AGENT))
            except (RequestFailed, RequestTimeout, ConnectionError):
                reply = None
            if reply is not None:
                alive = {p.name: p for p in reply.body.peers}  # type: ignore[attr-defined]
                gone = {t.agent_id for t in busy if t.agent_id
                        and (t.agent_id not in alive or self._forgotten(t, alive[t.agent_id]))}
                if gone:
                    await self.on_agents_lost(gone)
                self.check_returned(alive, lost)
        for sid in self.store.overdue_sessions(now):
            self._deadline_passed(sid)
        for task in self.store.tasks(states=("running",)):
            overdue = task.started_at and now - task.started_at > task.timeout_s * 1.5 + 30
            if overdue:
                self.peer.send(task.agent_id, TaskCancel(task_id=task.id,
                               attempt_id=task.attempt_id, reason="overdue"))
                self._release(task)
                self.move(task, "timed_out", "no result within the task timeout")
                self.workflow.on_final(task)
        self.schedule()

    # ---- used by the workflow -----------------------------------------------------------

    def move(self, task: TaskRow, to_state: str, detail: str = "", *,
             at: float | None = None, **fields: Any) -> None:
        """Record the task's new state (``at``: when it happened, if before now) and tell
        the world once it is durable."""
        self.move_through(task, [(to_state, detail, at, fields)])

    def move_through(self, task: TaskRow, steps: list[Step]) -> None:
        """Record the task's steps through its states (state, detail, at, columns) in one
        write, each with its history entry, and tell the world of each once durable."""
        told = []
        state, agent, meta = task.state, task.agent_id, task.meta
        for to_state, detail, _, fields in steps:
            if to_state != "queued" and "waiting" in fields.get("meta", meta):
                # waiting for an agent is a property of a queued attempt only
                fields["meta"] = {k: v for k, v in fields.get("meta", meta).items()
                                  if k != "waiting"}
            meta = fields.get("meta", meta)
            agent = fields.get("agent_id", agent)
            told.append((state, to_state, agent, detail))
            state = to_state
        self.store.transitions(task, steps)
        for prev, to_state, agent, detail in told:
            self.metrics.transitions.labels(to_state).inc()
            if to_state in TERMINAL:
                self.metrics.task_ended(task.role, task.kind, to_state,
                                        self.clock() - task.created_at)
            self.events.publish(task_topic(to_state), TaskEvent(
                session_id=task.session_id, task_id=task.id, attempt_id=task.attempt_id,
                state=to_state, prev_state=prev, agent_id=agent, detail=detail[:500]))

    def reopen(self, task: TaskRow, detail: str, **fields: Any) -> None:
        """Send finished work back: a new attempt follows (same branch, new instructions)."""
        self.move(task, "ready", detail, agent_id="", ready_at=0, **fields)

    def publish_task_state(self, session_id: str, task_id: str, state: str) -> None:
        self.events.publish(task_topic(state), TaskEvent(
            session_id=session_id, task_id=task_id, attempt_id="", state=state))

    def report(self, session_id: str) -> dict[str, Any]:
        return session_report(self.store, session_id)

    def finish_session(self, session_id: str, state: str, detail: str,
                       report: dict[str, Any] | None = None) -> None:
        row = self.store.session(session_id)
        if row is None or row["state"] != SessionState.RUNNING.value:
            return
        columns = {} if report is None else {"report": {**json.loads(row["report"]), **report}}
        self.store.set_session_state(session_id, state, detail, prev=row["state"], **columns)
        self.workflow.cleanup(session_id, row)
        self.metrics.sessions.labels(state).inc()
        self.log.info("session.finished", session=session_id, state=state, detail=detail)
        self.events.publish(session_topic(state),
                            SessionEvent(session_id=session_id, state=state, detail=detail[:500]))

    def _release(self, task: TaskRow, withdraw: bool = False, outcome: str = "",
                 duration_s: float = 0.0, agent_id: str = "") -> None:
        """Tell the distributor the agent's slot is free (``withdraw``: also take a task
        that is still queued out of its queue); ``outcome``/``duration_s`` feed its record
        of the agent's performance; ``agent_id``: the agent's, if not recorded yet."""
        agent_id = agent_id or task.agent_id
        if agent_id or withdraw:
            self.peer.send(DISTRIBUTOR, TaskReleased(
                task_id=task.id, attempt_id=task.attempt_id, agent_id=agent_id,
                outcome=outcome, duration_s=duration_s))

    def _stop_cancelled(self, task: TaskRow, attempt_id: str, agent_id: str) -> bool:
        """An agent took an attempt of a task cancelled meanwhile: stop it, free the slot."""
        if task.attempt_id != attempt_id or task.state != "cancelled":
            return False
        self.peer.send(agent_id, TaskCancel(task_id=task.id, attempt_id=attempt_id,
                                            reason="the task was cancelled"))
        self.peer.send(DISTRIBUTOR, TaskReleased(task_id=task.id, attempt_id=attempt_id,
                                                 agent_id=agent_id))
        return True


__all__ = ["Orchestrator", "CommandType"]
