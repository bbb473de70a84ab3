"""User commands: submit, accepted, status, cancel; and the session records they return."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field

from protocols.base import Body
from protocols.task import TaskState


class CommandType(str, Enum):
    ANALYZE_PROJECT = "ANALYZE_PROJECT"
    IMPLEMENT_FEATURE = "IMPLEMENT_FEATURE"
    FIX_ISSUES = "FIX_ISSUES"
    OPTIMIZE_PERFORMANCE = "OPTIMIZE_PERFORMANCE"
    REFACTOR_CODE = "REFACTOR_CODE"
    RUN = "RUN"  # one task, run as given by the role's executor


class SessionState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some of the work succeeded; the detail says what did not
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_SESSION_STATES = frozenset(
    {SessionState.SUCCEEDED, SessionState.PARTIAL, SessionState.FAILED, SessionState.CANCELLED}
)


class CommandSubmit(Body):
    TYPE = "command.submit"
    text: str = Field(min_length=1, max_length=100_000)
    repo: str = Field(min_length=1)
    type: CommandType | None = None
    role: str = "worker"
    priority: int = Field(default=0, ge=-100, le=100)
    budget_usd: float | None = Field(default=None, gt=0)
    max_parallel: int | None = Field(default=None, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    gates: list[str] | None = None  # quality gates to run instead of the template's
    #: seconds the whole session may take; then what is left is cancelled and it ends
    deadline_s: float | None = Field(default=None, gt=0)


class CommandAccepted(Body):
    TYPE = "command.accepted"
    session_id: str
    type: CommandType
    classification: str = ""


#: commands in one ``command.submit_batch`` (a client splits longer lists)
MAX_BATCH = 1000


class CommandSubmitBatch(Body):
    """Many commands at once: all are accepted, in one transaction, or none is (the error
    names the first command refused, by its 1-based position)."""

    TYPE = "command.submit_batch"
    commands: list[CommandSubmit] = Field(min_length=1, max_length=MAX_BATCH)


class CommandAcceptedBatch(Body):
    TYPE = "command.accepted_batch"
    accepted: list[CommandAccepted]  # in the order of the commands


class SessionCreate(Body):
    """commands -> orchestrator: persist and start a validated command."""

    TYPE = "session.create"
    session_id: str
    command: CommandSubmit
    type: CommandType
    classification: str = ""
    #: the peer that submitted it (its name, verified by the hub), for the audit log
    submitter: str = ""


class SessionCreated(Body):
    TYPE = "session.created"
    session_id: str


class SessionCreateBatch(Body):
    """commands -> orchestrator: persist and start many sessions in one transaction."""

    TYPE = "session.create_batch"
    sessions: list[SessionCreate] = Field(min_length=1, max_length=MAX_BATCH)


class SessionsCreated(Body):
    TYPE = "session.created_batch"
    session_ids: list[str]


class CommandStatus(Body):
    TYPE = "command.status"
    session_id: str
    #: also every attempt of every task (agent, state, start and end; without results)
    attempts: bool = False


class CommandCancel(Body):
    TYPE = "command.cancel"
    session_id: str
    reason: str = "cancelled by user"


class TaskInfo(Body):
    task_id: str
    title: str
    role: str
    state: TaskState
    attempt: int
    attempt_id: str
    agent_id: str = ""
    result: dict[str, Any] = {}
    updated_at: float = 0.0
    kind: str = "run"
    key: str = ""
    depends_on: list[str] = []
    parent: str = ""
    meta: dict[str, Any] = {}


class SessionInfo(Body):
    session_id: str
    type: CommandType
    text: str
    repo: str
    state: SessionState
    created_at: float
    updated_at: float
    detail: str = ""
    cost_usd: float = 0.0
    budget_usd: float | None = None
    base_commit: str = ""
    report: dict[str, Any] = {}


class AttemptInfo(Body):
    attempt_id: str
    n: int
    agent_id: str = ""
    state: str
    started_at: float
    ended_at: float = 0.0
    applied: bool = False
    task_id: str = ""
    result: dict[str, Any] = {}


class CommandStatusReply(Body):
    TYPE = "command.status_reply"
    session: SessionInfo
    tasks: list[TaskInfo]
    history: list[dict[str, Any]] = []
    attempts: list[AttemptInfo] = []  # when asked for, in the order they started


class SessionList(Body):
    TYPE = "session.list"
    limit: int = Field(default=20, ge=1, le=1000)


class SessionListReply(Body):
    TYPE = "session.list_reply"
    sessions: list[SessionInfo]


class SessionCounts(Body):
    """How many sessions and tasks are in each state (the state database's own count)."""

    TYPE = "session.counts"


class SessionCountsReply(Body):
    TYPE = "session.counts_reply"
    sessions: dict[str, int]
    tasks: dict[str, int]


class TaskLogs(Body):
    TYPE = "task.logs"
    task_id: str


class TaskLogsReply(Body):
    TYPE = "task.logs_reply"
    task: TaskInfo
    attempts: list[AttemptInfo]
