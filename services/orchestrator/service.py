"""The orchestrator's logic: persist sessions and tasks, move tasks through their states,
hand ready tasks to the distributor, apply results only from the current attempt, retry
with backoff, re-queue the tasks of lost agents, and finish sessions.

State machine of a task (see protocols/PROTOCOL.md):
  ready -> queued -> assigned -> running -> succeeded | failed | timed_out | cancelled
  and back to ready (a new attempt) after a failure with retries left or a lost agent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.config import SystemConfig
from libs.events import EventPublisher
from libs.gitrepo import head_commit
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import ErrorCode, Message, ProtocolError
from protocols.command import (
    CommandCancel,
    CommandStatus,
    CommandStatusReply,
    SessionCreate,
    SessionCreated,
    SessionInfo,
    SessionState,
    TaskInfo,
)
from protocols.events import SessionEvent, TaskEvent, session_topic, task_topic
from protocols.peer import PeerKind, RegistryList
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskCancel,
    TaskDispatched,
    TaskEnqueue,
    TaskReleased,
    TaskResult,
    TaskResultAck,
    TaskSpec,
)
from services.orchestrator.store import Store, TaskRow, new_id

DISTRIBUTOR = "distributor"
ACTIVE = ("queued", "assigned", "running")
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.transitions = Counter("ccaa_task_transitions_total", "task state changes",
                                   ["to_state"], registry=registry)
        self.sessions = Counter("ccaa_sessions_finished_total", "sessions finished, by state",
                                ["state"], registry=registry)
        self.stale_results = Counter("ccaa_stale_results_total",
                                     "results from superseded attempts (recorded, not applied)",
                                     registry=registry)
        self.lost_attempts = Counter("ccaa_attempts_lost_total",
                                     "attempts whose agent was lost", registry=registry)
        self.active = Gauge("ccaa_tasks_active", "tasks queued, assigned or running",
                            registry=registry)


class Orchestrator:
    def __init__(self, config: SystemConfig, store: Store, peer: Peer, events: EventPublisher,
                 registry: CollectorRegistry, log: EventLogger | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.peer = peer
        self.events = events
        self.log = log or get_logger("orchestrator")
        self.metrics = OrchestratorMetrics(registry)
        self.clock = clock
        self.handlers = {
            SessionCreate.TYPE: self.on_session_create,
            CommandStatus.TYPE: self.on_status,
            CommandCancel.TYPE: self.on_cancel,
            TaskDispatched.TYPE: self.on_dispatched,
            TaskAccepted.TYPE: self.on_accepted,
            TaskResult.TYPE: self.on_result,
        }

    # ---- commands ---------------------------------------------------------------------

    async def on_session_create(self, msg: Message) -> SessionCreated:
        body = msg.body
        assert isinstance(body, SessionCreate)
        if self.store.session(body.session_id) is not None:
            return SessionCreated(session_id=body.session_id)  # a retried request: idempotent
        cmd = body.command
        timeout = cmd.timeout_s or self.config.orchestrator.task_timeout
        task = {"id": new_id("task"), "title": cmd.text.splitlines()[0][:80], "prompt": cmd.text,
                "role": cmd.role, "cwd": cmd.repo, "priority": cmd.priority, "timeout_s": timeout}
        base = head_commit(cmd.repo) if self.config.orchestrator.isolate_worktrees else ""
        self.store.create_session(body.session_id, body.type.value, cmd.text, cmd.repo,
                                  body.classification, cmd.model_dump(mode="json"), [task],
                                  base_commit=base)
        self.log.info("session.created", session=body.session_id, type=body.type.value)
        self.events.publish(session_topic("running"),
                            SessionEvent(session_id=body.session_id, state="running"))
        self.schedule()
        return SessionCreated(session_id=body.session_id)

    async def on_status(self, msg: Message) -> CommandStatusReply:
        body = msg.body
        assert isinstance(body, CommandStatus)
        return self.status(body.session_id)

    def status(self, session_id: str) -> CommandStatusReply:
        row = self.store.session(session_id)
        if row is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {session_id!r}")
        info = SessionInfo(session_id=row["id"], type=row["type"], text=row["text"],
                           repo=row["repo"], state=row["state"], created_at=row["created_at"],
                           updated_at=row["updated_at"], detail=row["detail"])
        tasks = [TaskInfo(task_id=t.id, title=t.title, role=t.role, state=t.state,
                          attempt=t.attempt, attempt_id=t.attempt_id, agent_id=t.agent_id,
                          result=t.result, updated_at=t.updated_at)
                 for t in self.store.tasks(session_id)]
        return CommandStatusReply(session=info, tasks=tasks,
                                  history=self.store.history(session_id))

    async def on_cancel(self, msg: Message) -> CommandStatusReply:
        body = msg.body
        assert isinstance(body, CommandCancel)
        row = self.store.session(body.session_id)
        if row is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {body.session_id!r}")
        if row["state"] == SessionState.RUNNING.value:
            for task in self.store.tasks(body.session_id):
                if task.state in TERMINAL:
                    continue
                if task.state in ("assigned", "running") and task.agent_id:
                    self.peer.send(task.agent_id, TaskCancel(
                        task_id=task.id, attempt_id=task.attempt_id, reason=body.reason))
                if task.state in ACTIVE:
                    self._release(task)
                self._move(task, "cancelled", body.reason)
            self._finish_session(body.session_id, SessionState.CANCELLED, body.reason)
        return self.status(body.session_id)

    # ---- task flow --------------------------------------------------------------------

    def schedule(self) -> None:
        """Queue ready tasks whose backoff has passed, up to max_parallel_tasks.

        Synchronous on purpose: no other handler can interleave between reading the ready
        tasks and moving them to queued; the distributor requests run as their own tasks."""
        now = self.clock()
        room = self.config.orchestrator.max_parallel_tasks - self.store.count_active()
        for task in self.store.tasks(states=("ready",)):
            if room <= 0:
                break
            if task.ready_at > now:
                continue
            attempt_id = self.store.new_attempt(task)
            self._move(task, "queued", f"attempt {task.attempt}", attempt=task.attempt,
                       attempt_id=attempt_id, agent_id="", enqueued_at=now)
            room -= 1
            self.peer.spawn(self._enqueue(task))
        self.metrics.active.set(self.store.count_active())

    async def _schedule_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.schedule()

    async def _enqueue(self, task: TaskRow) -> None:
        session = self.store.session(task.session_id)
        base = session["base_commit"] if session is not None else ""
        spec = TaskSpec(task_id=task.id, attempt_id=task.attempt_id, session_id=task.session_id,
                        owner=self.peer.name, role=task.role, priority=task.priority,
                        title=task.title, prompt=task.prompt, cwd=task.cwd,
                        timeout_s=task.timeout_s, base_commit=base, isolate=bool(base))
        try:
            await self.peer.request(DISTRIBUTOR, TaskEnqueue(task=spec))
        except (RequestFailed, RequestTimeout, ConnectionError) as exc:
            # stays queued; the periodic tick enqueues it again (the distributor dedupes)
            self.log.warning("enqueue.failed", task=task.id, error=str(exc))

    async def on_dispatched(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskDispatched)
        task = self.store.task(body.task_id)
        if task is None or task.attempt_id != body.attempt_id or task.state != "queued":
            return None
        self._move(task, "assigned", f"to {body.agent_id}", agent_id=body.agent_id)
        self.store.set_attempt(body.attempt_id, agent_id=body.agent_id, state="assigned")
        return None

    async def on_accepted(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskAccepted)
        task = self.store.task(body.task_id)
        if task is None or task.attempt_id != body.attempt_id:
            return None
        if task.state == "queued":  # task.dispatched is still on its way
            self._move(task, "assigned", f"to {body.agent_id}", agent_id=body.agent_id)
        if task.state == "assigned":
            self._move(task, "running", f"on {body.agent_id}", agent_id=body.agent_id,
                       started_at=self.clock())
            self.store.set_attempt(body.attempt_id, agent_id=body.agent_id, state="running")
        return None

    async def on_result(self, msg: Message) -> TaskResultAck:
        body = msg.body
        assert isinstance(body, TaskResult)
        task = self.store.task(body.task_id)
        if task is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no task {body.task_id!r}")
        result = body.model_dump(mode="json")
        current = (task.attempt_id == body.attempt_id and task.state in ACTIVE
                   and task.agent_id in ("", body.agent_id))
        attempt = self.store.attempt(body.attempt_id)
        already = attempt is not None and attempt["ended_at"] > 0
        if not already:
            self.store.set_attempt(body.attempt_id, state=body.outcome.value,
                                   ended_at=self.clock(), result=result, applied=int(current))
        if not current:
            if not already:
                self.metrics.stale_results.inc()
                self.store.record(task.session_id, "stale_result", task.id, body.attempt_id,
                                  f"{body.outcome.value} from {body.agent_id} (not applied)")
            return TaskResultAck(task_id=task.id, attempt_id=body.attempt_id,
                                 applied=bool(already and attempt["applied"]))
        self._release(task)
        self._apply(task, body, result)
        self.schedule()
        return TaskResultAck(task_id=task.id, attempt_id=body.attempt_id, applied=True)

    def _apply(self, task: TaskRow, body: TaskResult, result: dict[str, Any]) -> None:
        outcome = body.outcome
        if outcome == Outcome.SUCCEEDED:
            self._move(task, "succeeded", f"on {body.agent_id}", result=result)
        elif outcome == Outcome.CANCELLED:
            self._move(task, "cancelled", body.error, result=result)
        elif task.attempt <= self.config.orchestrator.retry_attempts:
            delay = self.config.orchestrator.retry_backoff * (2 ** (task.attempt - 1))
            self._move(task, "ready", f"retry after {outcome.value}: {body.error}"[:500],
                       result=result, ready_at=self.clock() + delay, agent_id="")
            self.peer.spawn(self._schedule_after(delay))
        else:
            self._move(task, outcome.value, body.error[:500], result=result)
        self._maybe_finish(task.session_id)

    async def on_agents_lost(self, names: set[str]) -> None:
        """Agents gone (hub event or reconciliation): their attempts are lost; re-queue."""
        requeued = False
        for task in self.store.tasks(states=("assigned", "running")):
            if task.agent_id not in names:
                continue
            self.metrics.lost_attempts.inc()
            self.store.set_attempt(task.attempt_id, state="lost", ended_at=self.clock())
            self._release(task)
            self._move(task, "ready", f"agent {task.agent_id} lost", agent_id="", ready_at=0)
            requeued = True
            self.log.warning("task.requeued", task=task.id, agent=task.agent_id)
        if requeued:
            self.schedule()

    async def reconcile(self) -> None:
        """Periodic: re-enqueue stale queued tasks, catch lost agents and overdue attempts."""
        now = self.clock()
        resend = max(5.0, self.config.communication.message_timeout)
        for task in self.store.tasks(states=("queued",)):
            if now - task.enqueued_at > resend:
                self.store.transition(task, "queued", "re-enqueued", enqueued_at=now)
                self.peer.spawn(self._enqueue(task))
        busy = self.store.tasks(states=("assigned", "running"))
        if busy:
            try:
                reply = await self.peer.request("hub", RegistryList(kind=PeerKind.AGENT))
            except (RequestFailed, RequestTimeout, ConnectionError):
                reply = None
            if reply is not None:
                alive = {p.name for p in reply.body.peers}  # type: ignore[attr-defined]
                gone = {t.agent_id for t in busy if t.agent_id and t.agent_id not in alive}
                if gone:
                    await self.on_agents_lost(gone)
        for task in self.store.tasks(states=("running",)):
            overdue = task.started_at and now - task.started_at > task.timeout_s * 1.5 + 30
            if overdue:
                self.peer.send(task.agent_id, TaskCancel(task_id=task.id,
                               attempt_id=task.attempt_id, reason="overdue"))
                self._release(task)
                self._move(task, "timed_out", "no result within the task timeout")
                self._maybe_finish(task.session_id)
        self.schedule()

    # ---- helpers ----------------------------------------------------------------------

    def _move(self, task: TaskRow, to_state: str, detail: str = "", **fields: Any) -> None:
        prev = task.state
        self.store.transition(task, to_state, detail, **fields)
        self.metrics.transitions.labels(to_state).inc()
        self.events.publish(task_topic(to_state), TaskEvent(
            session_id=task.session_id, task_id=task.id, attempt_id=task.attempt_id,
            state=to_state, prev_state=prev, agent_id=task.agent_id, detail=detail[:500]))

    def _release(self, task: TaskRow) -> None:
        if task.agent_id:
            self.peer.send(DISTRIBUTOR, TaskReleased(task_id=task.id, attempt_id=task.attempt_id,
                                                     agent_id=task.agent_id))

    def _maybe_finish(self, session_id: str) -> None:
        tasks = self.store.tasks(session_id)
        if not tasks or any(t.state not in TERMINAL for t in tasks):
            return
        failed = [t for t in tasks if t.state != "succeeded"]
        if failed:
            detail = "; ".join(f"{t.id} {t.state}" for t in failed)
            self._finish_session(session_id, SessionState.FAILED, detail)
        else:
            self._finish_session(session_id, SessionState.SUCCEEDED, f"{len(tasks)} task(s)")

    def _finish_session(self, session_id: str, state: SessionState, detail: str) -> None:
        row = self.store.session(session_id)
        if row is None or row["state"] != SessionState.RUNNING.value:
            return
        self.store.set_session_state(session_id, state.value, detail)
        self.metrics.sessions.labels(state.value).inc()
        self.log.info("session.finished", session=session_id, state=state.value, detail=detail)
        self.events.publish(session_topic(state.value),
                            SessionEvent(session_id=session_id, state=state.value, detail=detail))


