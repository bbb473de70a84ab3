"""Task assignment and results: orchestrator -> distributor -> agent -> orchestrator."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field

from protocols.base import Body


class TaskState(str, Enum):
    PENDING = "pending"
    READY = "ready"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED}
)


class Outcome(str, Enum):
    """How an attempt ended, as the agent reports it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"  # stopped on the owner's request (task.cancel)
    #: the agent went away mid-run (stopping, restarting, over its memory limit): not the
    #: task's fault, so the owner runs it again without using up a retry
    INTERRUPTED = "interrupted"


#: characters of a previous attempt's report a task spec carries
MAX_SUMMARY = 4000
#: most bytes of a compressed Claude Code transcript sent in one message (limit 4 MiB)
MAX_TRANSCRIPT = 3 * 1024 * 1024


class TaskSpec(Body):
    """Everything an agent needs to run one attempt of a task."""

    task_id: str = Field(min_length=1, max_length=64)
    attempt_id: str = Field(min_length=1, max_length=64)
    session_id: str = Field(min_length=1, max_length=64)
    owner: str = "orchestrator"
    role: str = "worker"
    capabilities: list[str] = []
    priority: int = 0
    title: str = ""
    prompt: str = Field(min_length=1)
    cwd: str = ""
    timeout_s: float = Field(default=600.0, gt=0)
    executor: str = ""  # empty: the role's configured executor
    resume_session: str = ""  # executor session to resume (claude --resume)
    base_commit: str = ""  # the session's base commit; empty: run in cwd as it is
    isolate: bool = False  # run in a git worktree of its own (branch ccaa/<session>/<task>)
    #: the agent that ran the task's previous attempt: preferred again (then its host), and
    #: asked for the Claude Code session's transcript when this agent does not have it
    prefer_agent: str = Field(default="", max_length=128)
    #: the previous attempt's final report, for a fresh session when its own cannot resume
    previous_summary: str = Field(default="", max_length=MAX_SUMMARY)


class TaskEnqueue(Body):
    TYPE = "task.enqueue"
    task: TaskSpec


class TaskAssign(Body):
    TYPE = "task.assign"
    task: TaskSpec


class TaskDispatched(Body):
    TYPE = "task.dispatched"
    task_id: str
    attempt_id: str
    agent_id: str


class TaskAccepted(Body):
    TYPE = "task.accepted"
    task_id: str
    attempt_id: str
    agent_id: str
    #: seconds the attempt had already run when its agent told the owner (the owner
    #: records it running from then, not from when the message came)
    running_s: float = Field(default=0.0, ge=0, le=86_400)


class TaskProgress(Body):
    TYPE = "task.progress"
    session_id: str
    task_id: str
    attempt_id: str
    agent_id: str
    kind: str  # started | tool_use | text | retry | output | ...
    summary: str = ""
    data: dict[str, Any] = {}


class TaskResult(Body):
    TYPE = "task.result"
    session_id: str
    task_id: str
    attempt_id: str
    agent_id: str
    outcome: Outcome
    exit_code: int | None = None
    stdout: str = ""  # tail, bounded by the agent
    stderr: str = ""  # tail, bounded by the agent
    error: str = ""
    duration_s: float = 0.0
    data: dict[str, Any] = {}  # executor-specific figures (cost, tokens, branch, ...)
    #: the agent has told the distributor that assigned the attempt that it ended (its
    #: own ``task.released``, with this outcome): the owner sends no release of its own
    released: bool = False


class TaskResultAck(Body):
    TYPE = "task.result_ack"
    task_id: str
    attempt_id: str
    applied: bool  # False: the attempt was superseded; the result was recorded only


class TaskCancel(Body):
    TYPE = "task.cancel"
    task_id: str
    attempt_id: str
    reason: str = ""


class TaskReleased(Body):
    """The attempt no longer holds an agent slot (result applied, cancelled, agent lost).
    ``outcome`` and ``duration_s`` come from the agent's result when there was one: the
    distributor's performance record.

    The agent itself sends one, the moment the attempt ends, to the distributor that
    assigned it: its slot is free at once and its outcome goes into the record (an attempt
    that ends before its agent has answered the assignment is answered so). Its
    result then says ``released`` and the owner sends none; the owner releases what the
    agent did not (a lost agent, a cancelled or withdrawn attempt, a release that could
    not be sent)."""

    TYPE = "task.released"
    task_id: str
    attempt_id: str
    agent_id: str
    outcome: str = ""  # an Outcome value, "lost", or "" (withdrawn before it ran)
    duration_s: float = 0.0


class TaskWaiting(Body):
    """The distributor tells a task's owner that no registered agent could ever take a
    queued attempt (``reason`` says which role or capability is missing), or, with an
    empty reason, that one can again."""

    TYPE = "task.waiting"
    task_id: str
    attempt_id: str
    reason: str = ""


class AgentStats(Body):
    """Ask the orchestrator for each agent's attempt record (performance_based choice)."""

    TYPE = "agent.stats"
    since_s: float = Field(default=7 * 86400.0, gt=0)  # look back this many seconds


class AgentRecord(Body):
    attempts: int = 0  # attempts with a result (not lost)
    succeeded: int = 0
    busy_s: float = 0.0  # summed duration of those attempts


class AgentStatsReply(Body):
    TYPE = "agent.stats_reply"
    agents: dict[str, AgentRecord] = {}


class QueueStats(Body):
    """Ask the distributor how much work waits, per role."""

    TYPE = "queue.stats"


class QueueStatsReply(Body):
    TYPE = "queue.stats_reply"
    queued: dict[str, int]  # role -> tasks waiting for an agent
    agents: dict[str, int]  # role -> agents known
    busy: dict[str, int]  # role -> agents at capacity


class TranscriptGet(Body):
    """Asks the agent that ran a Claude Code session for its transcript, so a retry on
    another host resumes it."""

    TYPE = "claude.transcript_get"
    session_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")  # a session id, never a path


class Transcript(Body):
    TYPE = "claude.transcript"
    BINARY = ("data",)
    session_id: str
    data: bytes = Field(max_length=MAX_TRANSCRIPT)  # the session's JSONL, zlib-compressed
