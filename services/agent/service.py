"""One agent: accepts assignments up to its capacity, runs each attempt with its executor
under the task timeout, streams progress as events, and keeps every result until the
owner acknowledges it (resending on an interval and after re-registering)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from libs.events import EventPublisher
from libs.log import EventLogger, get_logger
from libs.peer import Peer
from protocols import ErrorCode, Message, ProtocolError
from protocols.peer import PeerHeartbeat, PeerState
from protocols.task import (
    Outcome,
    TaskAccepted,
    TaskAssign,
    TaskCancel,
    TaskProgress,
    TaskReleased,
    TaskResult,
    TaskResultAck,
    TaskSpec,
    Transcript,
    TranscriptGet,
)
from services.agent.executors import transcripts
from services.agent.executors.base import ExecutionResult, Executor, RunContext

ExecutorFactory = Callable[[TaskSpec], Executor]

#: seconds an attempt runs before the agent tells its owner and its assigner it took it
#: (``task.accepted``): one that ends sooner is told by its result alone to the owner, and
#: by its release alone to the assigner, as the answer to the assignment (a routed message
#: fewer each, and one owner transaction fewer, for short work; nothing later for long)
ACCEPTED_NOTICE_DELAY = 0.05


@dataclass
class Running:
    spec: TaskSpec
    ctx: RunContext
    task: "asyncio.Task[None]"
    started: float
    cancel_reason: str = ""
    assigner: str = ""  # the distributor that assigned it: told at once when it ends
    notice: asyncio.TimerHandle | None = None  # the owner's task.accepted, not sent yet
    assign_id: str = ""  # the assignment not answered yet (its task.accepted or release)


class Agent:
    def __init__(self, peer: Peer, events: EventPublisher, executor_for: ExecutorFactory,
                 registry: CollectorRegistry, resend_interval: float = 2.0,
                 log: EventLogger | None = None, code: Any = None,
                 claude_dir: Path | None = None):
        self.peer = peer
        self.claude_dir = claude_dir  # where this host's Claude Code sessions are kept
        self.code = code  # services.agent.code.CodeSource: repositories over the bus
        self.events = events
        self.executor_for = executor_for
        self.resend_interval = resend_interval
        self.log = log or get_logger(peer.name)
        self.running: dict[str, Running] = {}  # attempt_id -> run
        self.unacked: dict[str, TaskResult] = {}  # attempt_id -> result awaiting ack
        self.sent_at: dict[str, float] = {}  # attempt_id -> when its result was last sent
        self.owners: dict[str, str] = {}  # attempt_id -> peer that owns the task
        self.stopping = False  # set by stop(), or early by the process's stop signal
        self.finished = Counter("ccaa_agent_attempts_total", "attempts finished, by outcome",
                                ["outcome"], registry=registry)
        for outcome in Outcome:  # every series exists from the start
            self.finished.labels(outcome.value)
        self.busy = Gauge("ccaa_agent_running", "attempts running now", registry=registry)
        self.waiting_ack = Gauge("ccaa_agent_results_unacked", "results sent and not yet "
                                 "acknowledged by their owner (resent until they are)",
                                 registry=registry)
        self.handlers = {
            TaskAssign.TYPE: self.on_assign,
            TaskCancel.TYPE: self.on_cancel,
            TaskResultAck.TYPE: self.on_ack,
            TranscriptGet.TYPE: self.on_transcript_get,
        }
        peer.heartbeat_body = self.heartbeat
        peer.on_registered.append(self.resend_all)

    @property
    def name(self) -> str:
        return self.peer.name

    def heartbeat(self) -> PeerHeartbeat:
        load = len(self.running)
        state = PeerState.BUSY if load >= self.peer.capacity else PeerState.IDLE
        if self.stopping:
            state = PeerState.DRAINING
        return PeerHeartbeat(state=state, load=load,
                             running=[r.spec.task_id for r in self.running.values()])

    # ---- handlers ---------------------------------------------------------------------

    async def on_assign(self, msg: Message) -> TaskAccepted | None:
        spec = msg.body.task  # type: ignore[attr-defined]
        accepted = TaskAccepted(task_id=spec.task_id, attempt_id=spec.attempt_id,
                                agent_id=self.name)
        if spec.attempt_id in self.running or spec.attempt_id in self.unacked:
            return accepted  # a repeated assignment of an attempt already here
        if self.stopping:  # (e.g. its controller died): the work goes to another agent
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"{self.name} is stopping")
        if len(self.running) >= self.peer.capacity:
            raise ProtocolError(ErrorCode.BUSY, f"{self.name} is running "
                                f"{len(self.running)}/{self.peer.capacity} tasks")
        try:
            executor = self.executor_for(spec)
        except Exception as exc:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"cannot run this task: {exc}") from None
        ctx = RunContext(spec=spec, agent_id=self.name,
                         progress=lambda kind, summary, data: self._progress(spec, kind,
                                                                             summary, data),
                         code=self.code, ask=self.peer.request)
        task = asyncio.ensure_future(self._run(executor, ctx))
        self.owners[spec.attempt_id] = spec.owner
        run = Running(spec, ctx, task, time.monotonic(), assigner=msg.header.src)
        self.running[spec.attempt_id] = run
        self.busy.set(len(self.running))
        self.log.info("task.started", task=spec.task_id, attempt=spec.attempt_id,
                      executor=executor.name)
        if spec.owner == msg.header.src:
            return accepted  # assigned by its owner: the result tells it the rest
        # a distributor assigned it: it is answered with the owner's notice, or by the
        # release if the attempt ends sooner (refusals above are answered at once)
        run.assign_id = msg.header.id
        run.notice = asyncio.get_running_loop().call_later(
            ACCEPTED_NOTICE_DELAY, self._tell_accepted, run, accepted)
        return None

    def _tell_accepted(self, run: Running, accepted: TaskAccepted) -> None:
        run.notice = None
        if self.running.get(run.spec.attempt_id) is not run:
            return
        try:
            if run.assign_id:
                self.peer.send(run.assigner, accepted, corr=run.assign_id)
                run.assign_id = ""
            self.peer.send(run.spec.owner, accepted.model_copy(update={
                "running_s": round(time.monotonic() - run.started, 3)}))
        except ConnectionError:
            pass  # the release answers the assigner; the result (resent) tells the owner

    async def on_cancel(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskCancel)
        run = self.running.get(body.attempt_id)
        if run is not None:
            run.cancel_reason = body.reason or "cancelled"
            run.task.cancel()
            self.log.info("task.cancelling", task=body.task_id, reason=run.cancel_reason)
        return None

    async def on_ack(self, msg: Message) -> None:
        body = msg.body
        assert isinstance(body, TaskResultAck)
        if self.unacked.pop(body.attempt_id, None) is not None:
            self.owners.pop(body.attempt_id, None)
            self.sent_at.pop(body.attempt_id, None)
            self.waiting_ack.set(len(self.unacked))
            self.log.info("result.acked", task=body.task_id, applied=body.applied)
        return None

    async def on_transcript_get(self, msg: Message) -> Transcript:
        """Another agent took over a task this one ran: it gets the Claude Code session's
        transcript to resume it (session ids are unguessable; the bus authenticates)."""
        body = msg.body
        assert isinstance(body, TranscriptGet)
        if self.claude_dir is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{self.name} runs no Claude Code sessions")
        try:
            data = await asyncio.to_thread(transcripts.pack, self.claude_dir, body.session_id)
        except FileNotFoundError as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, str(exc)) from None
        except (ValueError, OSError) as exc:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        self.log.info("transcript.sent", session=body.session_id, to=msg.header.src,
                      bytes=len(data))
        return Transcript(session_id=body.session_id, data=data)

    # ---- running ----------------------------------------------------------------------

    async def _run(self, executor: Executor, ctx: RunContext) -> None:
        spec = ctx.spec
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(executor.run(ctx), spec.timeout_s)
        except asyncio.TimeoutError:
            result = ctx.finished or ExecutionResult(
                Outcome.TIMED_OUT, error=f"timed out after {spec.timeout_s:g}s")
        except asyncio.CancelledError:
            run = self.running.get(spec.attempt_id)
            if ctx.finished is not None:
                # the work ended by itself as it was being stopped: that is its result
                result = ctx.finished
                self.log.info("task.ended_as_stopped", task=spec.task_id,
                              outcome=result.outcome.value)
            elif run is not None and run.cancel_reason:  # the owner asked (task.cancel)
                result = ExecutionResult(Outcome.CANCELLED, error=run.cancel_reason)
            else:
                result = ExecutionResult(Outcome.INTERRUPTED, error="agent stopping")
        except Exception as exc:
            self.log.exception("executor.failed", task=spec.task_id)
            result = ExecutionResult(Outcome.FAILED, error=f"{type(exc).__name__}: {exc}")
        if ctx.data.get("code_error") and result.outcome == Outcome.SUCCEEDED:
            # the work is done but its branch never reached the repository's host: the
            # owner could not gate or merge it, so the attempt fails (and is retried)
            result = ExecutionResult(Outcome.FAILED, exit_code=result.exit_code,
                                     error=ctx.data["code_error"])
        if self.stopping and result.outcome in (Outcome.FAILED, Outcome.CANCELLED):
            # its processes died with the agent (a signal to the whole group): not the
            # task's fault, so the owner runs it again
            result = ExecutionResult(Outcome.INTERRUPTED, exit_code=result.exit_code,
                                     error=f"agent stopping ({result.error or 'killed'})")
        run = self.running.pop(spec.attempt_id, None)
        self.busy.set(len(self.running))
        if run is not None and run.notice is not None:
            run.notice.cancel()  # ended at once: the result tells the owner everything
            run.notice = None
        released = (run is not None and bool(run.assigner) and run.assigner != spec.owner
                    and self._free_slot(run, result.outcome.value))
        report = TaskResult(
            session_id=spec.session_id, task_id=spec.task_id, attempt_id=spec.attempt_id,
            agent_id=self.name, outcome=result.outcome, exit_code=result.exit_code,
            stdout=ctx.stdout.text(), stderr=ctx.stderr.text(), error=result.error,
            duration_s=round(time.monotonic() - started, 3), data=ctx.data,
            released=released,
        )
        self.finished.labels(result.outcome.value).inc()
        self.unacked[spec.attempt_id] = report
        self.waiting_ack.set(len(self.unacked))
        self.log.info("task.finished", task=spec.task_id, outcome=result.outcome.value,
                      exit_code=result.exit_code, seconds=report.duration_s)
        self._progress(spec, "finished", result.outcome.value, {"exit_code": result.exit_code})
        self._send_result(report)

    def _free_slot(self, run: Running, outcome: str) -> bool:
        """Tell the distributor this agent's slot is free now, not once the owner has
        applied the result (the answer to its assignment, if that is still owed); False if
        it could not be told (the owner's release frees it)."""
        try:
            self.peer.send(run.assigner, TaskReleased(
                task_id=run.spec.task_id, attempt_id=run.spec.attempt_id, agent_id=self.name,
                outcome=outcome, duration_s=round(time.monotonic() - run.started, 3)),
                corr=run.assign_id)
        except ConnectionError:
            return False
        run.assign_id = ""
        return True

    def _send_result(self, report: TaskResult) -> None:
        owner = self._owner(report.attempt_id)
        try:
            self.peer.send(owner, report)
        except ConnectionError:
            return  # resent once connected
        self.sent_at[report.attempt_id] = time.monotonic()

    def _owner(self, attempt_id: str) -> str:
        return self.owners.get(attempt_id, "orchestrator")

    def resend_all(self, older_than: float = 0.0) -> None:
        """Send again every result not acknowledged (``older_than``: only those last sent
        at least that many seconds ago)."""
        cutoff = time.monotonic() - older_than
        for attempt_id, report in list(self.unacked.items()):
            if self.sent_at.get(attempt_id, 0.0) <= cutoff:
                self._send_result(report)

    async def resend_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.resend_interval)
            except asyncio.TimeoutError:
                if self.peer.registered:
                    self.resend_all(older_than=self.resend_interval)

    async def stop(self) -> None:
        """Stop every running attempt; each is reported ``interrupted`` (run again by its
        owner elsewhere, not failed)."""
        self.stopping = True
        for run in list(self.running.values()):
            run.task.cancel()
        if self.running:
            await asyncio.gather(*(r.task for r in self.running.values()), return_exceptions=True)
        self.resend_all()

    def _progress(self, spec: TaskSpec, kind: str, summary: str, data: dict[str, Any]) -> None:
        self.events.publish("task.progress", TaskProgress(
            session_id=spec.session_id, task_id=spec.task_id, attempt_id=spec.attempt_id,
            agent_id=self.name, kind=kind, summary=summary[:500], data=data))
