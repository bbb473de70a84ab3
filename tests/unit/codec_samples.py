"""One sample body of every registered message type (the codec tests round-trip each)."""

from __future__ import annotations

import zlib

from protocols import ErrorCode
from protocols.audit import AuditQuery, AuditRecord, AuditReply
from protocols.base import Body
from protocols.events import KeysChanged
from protocols.node import NodeConfigGet, NodeConfigReply
from protocols import repo as r
from protocols.command import (
    CommandAccepted,
    CommandAcceptedBatch,
    CommandCancel,
    CommandStatus,
    CommandStatusReply,
    CommandSubmit,
    CommandSubmitBatch,
    CommandType,
    SessionCreate,
    SessionCreateBatch,
    SessionCreated,
    SessionsCreated,
    SessionList,
    SessionListReply,
    SessionCounts,
    SessionCountsReply,
    TaskLogs,
    TaskLogsReply,
    AttemptInfo,
    SessionInfo,
    SessionState,
    TaskInfo,
)
from protocols.events import PeerEvent, SessionEvent, TaskEvent
from protocols.peer import (
    Ack,
    Bundle,
    Error,
    PeerDisconnect,
    PeerHeartbeat,
    PeerInfo,
    PeerKind,
    PeerRegister,
    PeerRegistered,
    PeerState,
    RegistryList,
    RegistryListReply,
)
from protocols.task import (
    Transcript,
    TranscriptGet,
    AgentRecord,
    AgentStats,
    AgentStatsReply,
    QueueStats,
    QueueStatsReply,
    TaskWaiting,
    Outcome,
    TaskAccepted,
    TaskAssign,
    TaskCancel,
    TaskDispatched,
    TaskEnqueue,
    TaskProgress,
    TaskReleased,
    TaskResult,
    TaskResultAck,
    TaskSpec,
    TaskState,
)


def task_spec(**kw) -> TaskSpec:
    """A task spec with every field set (``kw`` overrides)."""
    base = dict(task_id="task-1", attempt_id="att-1", session_id="sess-1", owner="orchestrator",
                role="worker", capabilities=["python", "git"], priority=3, title="a title",
                prompt="do the thing\nwith care", cwd="/tmp/repo", timeout_s=12.5,
                executor="command", resume_session="r-1", base_commit="abc123", isolate=True,
                prefer_agent="agent-worker-b-1", previous_summary="did half of it")
    base.update(kw)
    return TaskSpec(**base)


def submit() -> CommandSubmit:
    return CommandSubmit(text="fix the crash", repo="/tmp/repo", type=CommandType.FIX_ISSUES,
                         role="worker", priority=-7, budget_usd=2.5, max_parallel=3,
                         timeout_s=60.0)


SAMPLES: dict[str, Body] = {
    "peer.register": PeerRegister(name="agent-worker-1", kind=PeerKind.AGENT, role="worker",
                                  capabilities=["python"], capacity=2, pid=4242, host="box",
                                  metrics_url="http://127.0.0.1:9000/metrics", auth="ok"),
    "peer.registered": PeerRegistered(name="agent-worker-1", hub_id="hub-abc",
                                      heartbeat_interval=0.25, liveness=4),
    "peer.heartbeat": PeerHeartbeat(state=PeerState.BUSY, load=2, running=["t1", "t2"]),
    "peer.disconnect": PeerDisconnect(reason="shutdown"),
    "error": Error(code=ErrorCode.BUSY, reason="at capacity", details={"capacity": 1,
                                                                       "running": ["t"]}),
    "ack": Ack(detail="queued"),
    "bus.bundle": Bundle(messages=[(b"\x81\xa1v\x01", b"\x80"), (b"h2", b"b2")]),
    "registry.list": RegistryList(kind=PeerKind.SERVICE),
    "registry.list_reply": RegistryListReply(hub_id="hub-abc", hub_pid=7, peers=[
        PeerInfo(name="a1", kind=PeerKind.AGENT, role="worker", capabilities=["x"], capacity=2,
                 state=PeerState.BUSY, load=1, running=["t1"], pid=9, host="h",
                 metrics_url="http://h/metrics", registered_at=1.5, last_seen_ago=0.25),
        PeerInfo(name="orchestrator", kind=PeerKind.SERVICE),
    ]),
    "repo.fetch": r.RepoFetch(session_id="s1", want="a" * 40, have=["b" * 40],
                              branch="ccaa/s1/t1"),
    "repo.offer": r.RepoOffer(transfer_id="x1", size=300, sha256="c" * 64,
                              refs={"refs/ccaa/transfer/x1": "a" * 40}),
    "repo.chunk_get": r.RepoChunkGet(transfer_id="x1", offset=0, size=256),
    "repo.chunk": r.RepoChunk(transfer_id="x1", offset=0, data=bytes(range(256))),
    "repo.release": r.RepoRelease(transfer_id="x1"),
    "repo.push": r.RepoPush(session_id="s1", task_id="t1", attempt_id="a1",
                            branch="ccaa/s1/t1", commit="d" * 40, size=10, sha256="e" * 64),
    "repo.push_chunk": r.RepoPushChunk(transfer_id="x2", offset=0, data=b"\x00\xff" * 5),
    "repo.push_done": r.RepoPushDone(transfer_id="x2"),
    "repo.pushed": r.RepoPushed(branch="ccaa/s1/t1", commit="d" * 40),
    "node.config": NodeConfigGet(host="node-b"),
    "node.config_reply": NodeConfigReply(hub_id="hub-abc", pub_port=5556, sub_port=5557,
                                         config={"agent_hierarchy": {"worker": {"count": 2}}}),
    "command.submit": submit(),
    "command.accepted": CommandAccepted(session_id="sess-1", type=CommandType.RUN,
                                        classification="given"),
    "command.status": CommandStatus(session_id="sess-1"),
    "command.cancel": CommandCancel(session_id="sess-1", reason="changed my mind"),
    "command.status_reply": CommandStatusReply(
        session=SessionInfo(session_id="sess-1", type=CommandType.ANALYZE_PROJECT, text="t",
                            repo="/r", state=SessionState.FAILED, created_at=1.0,
                            updated_at=2.0, detail="task-1 failed"),
        tasks=[TaskInfo(task_id="task-1", title="t", role="worker", state=TaskState.FAILED,
                        attempt=3, attempt_id="att-3", agent_id="a1",
                        result={"exit_code": 1, "stdout": "x"}, updated_at=2.0)],
        history=[{"ts": 1.0, "kind": "task", "to_state": "ready"}],
    ),
    "session.create": SessionCreate(session_id="sess-1", command=submit(),
                                    type=CommandType.FIX_ISSUES, classification="cue words"),
    "session.created": SessionCreated(session_id="sess-1"),
    "command.submit_batch": CommandSubmitBatch(commands=[submit(), submit()]),
    "command.accepted_batch": CommandAcceptedBatch(accepted=[CommandAccepted(
        session_id="sess-1", type=CommandType.RUN, classification="given")]),
    "session.create_batch": SessionCreateBatch(sessions=[SessionCreate(
        session_id="sess-1", command=submit(), type=CommandType.RUN)]),
    "session.created_batch": SessionsCreated(session_ids=["sess-1"]),
    "queue.stats": QueueStats(),
    "task.waiting": TaskWaiting(task_id="task-1", attempt_id="att-1",
                                reason="no agent with role manager"),
    "agent.stats": AgentStats(since_s=3600),
    "agent.stats_reply": AgentStatsReply(agents={"agent-w-1": AgentRecord(
        attempts=3, succeeded=2, busy_s=4.5)}),
    "queue.stats_reply": QueueStatsReply(queued={"worker": 3}, agents={"worker": 2},
                                         busy={"worker": 2}),
    "session.list": SessionList(limit=5),
    "session.counts": SessionCounts(),
    "session.counts_reply": SessionCountsReply(sessions={"running": 1}, tasks={"queued": 2}),
    "session.list_reply": SessionListReply(sessions=[
        SessionInfo(session_id="sess-1", type=CommandType.IMPLEMENT_FEATURE, text="t", repo="/r",
                    state=SessionState.PARTIAL, created_at=1.0, updated_at=2.0, cost_usd=0.25,
                    budget_usd=1.0, base_commit="abc", report={"branch": "ccaa/sess-1/result"})]),
    "task.logs": TaskLogs(task_id="task-1"),
    "task.logs_reply": TaskLogsReply(
        task=TaskInfo(task_id="task-1", title="t", role="worker", state=TaskState.SUCCEEDED,
                      attempt=2, attempt_id="att-2", kind="work", key="a",
                      depends_on=["task-0"], parent="", meta={"accepted": True}),
        attempts=[AttemptInfo(attempt_id="att-1", n=1, agent_id="a1", state="lost",
                              started_at=1.0),
                  AttemptInfo(attempt_id="att-2", n=2, agent_id="a2", state="succeeded",
                              started_at=2.0, ended_at=3.0, applied=True,
                              result={"exit_code": 0})]),
    "task.enqueue": TaskEnqueue(task=task_spec()),
    "claude.transcript_get": TranscriptGet(session_id="66673461-7f69-428f-86ff-dc3eeb96cc61"),
    "claude.transcript": Transcript(session_id="66673461-7f69-428f-86ff-dc3eeb96cc61",
                                    data=zlib.compress(b'{"type": "user"}\n')),
    "task.assign": TaskAssign(task=task_spec(priority=-2, isolate=False)),
    "task.dispatched": TaskDispatched(task_id="task-1", attempt_id="att-1", agent_id="a1"),
    "task.accepted": TaskAccepted(task_id="task-1", attempt_id="att-1", agent_id="a1"),
    "task.progress": TaskProgress(session_id="sess-1", task_id="task-1", attempt_id="att-1",
                                  agent_id="a1", kind="tool_use", summary="Edit foo.py",
                                  data={"tool": "Edit", "n": 3, "nested": {"ok": True}}),
    "task.result": TaskResult(session_id="sess-1", task_id="task-1", attempt_id="att-1",
                              agent_id="a1", outcome=Outcome.TIMED_OUT, exit_code=-9,
                              stdout="out", stderr="err", error="timeout", duration_s=3.25,
                              data={"cost_usd": 0.01}),
    "task.result_ack": TaskResultAck(task_id="task-1", attempt_id="att-1", applied=False),
    "task.cancel": TaskCancel(task_id="task-1", attempt_id="att-1", reason="user"),
    "task.released": TaskReleased(task_id="task-1", attempt_id="att-1", agent_id="a1"),
    "event.task": TaskEvent(session_id="sess-1", task_id="task-1", attempt_id="att-1",
                            state="running", prev_state="assigned", agent_id="a1", detail="on a1"),
    "event.session": SessionEvent(session_id="sess-1", state="succeeded", detail="1 task(s)"),
    "event.peer": PeerEvent(name="a1", kind="agent", role="worker", state="lost",
                            reason="silent"),
    "event.keys": KeysChanged(added=["rack-a"], removed=["old"]),
    "audit.query": AuditQuery(since=1700000000.0, session_id="s-1", action="submit", limit=50),
    "audit.reply": AuditReply(records=[AuditRecord(
        ts=1700000000.5, action="submit", actor="cli-1", who="alice@box", session_id="s-1",
        detail="RUN in /tmp/repo")]),
}
