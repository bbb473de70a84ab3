"""Read-only answers about sessions and tasks: status, the session list, a task's logs."""

from __future__ import annotations

import json
from typing import Any

from protocols import ErrorCode, ProtocolError
from protocols.task import AgentRecord, AgentStatsReply
from protocols.command import (
    AttemptInfo,
    CommandStatusReply,
    SessionInfo,
    SessionListReply,
    TaskInfo,
    TaskLogsReply,
)
from services.orchestrator.store import Store, TaskRow


def session_info(row: Any) -> SessionInfo:
    return SessionInfo(session_id=row["id"], type=row["type"], text=row["text"],
                       repo=row["repo"], state=row["state"], created_at=row["created_at"],
                       updated_at=row["updated_at"], detail=row["detail"],
                       cost_usd=row["cost_usd"], budget_usd=row["budget_usd"],
                       base_commit=row["base_commit"], report=json.loads(row["report"]))


def task_info(t: TaskRow) -> TaskInfo:
    return TaskInfo(task_id=t.id, title=t.title, role=t.role, state=t.state, attempt=t.attempt,
                    attempt_id=t.attempt_id, agent_id=t.agent_id, result=t.result,
                    updated_at=t.updated_at, kind=t.kind, key=t.key, depends_on=t.depends_on,
                    parent=t.parent, meta=t.meta)


def attempt_info(r: Any, with_result: bool = True) -> AttemptInfo:
    return AttemptInfo(attempt_id=r["id"], n=r["n"], agent_id=r["agent_id"],
                       state=r["state"], started_at=r["started_at"], ended_at=r["ended_at"],
                       applied=bool(r["applied"]),
                       result=json.loads(r["result"]) if with_result else {},
                       task_id=r["task_id"])


def status(store: Store, session_id: str, attempts: bool = False) -> CommandStatusReply:
    row = store.session(session_id)
    if row is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no session {session_id!r}")
    reply = CommandStatusReply(session=session_info(row),
                               tasks=[task_info(t) for t in store.tasks(session_id)],
                               history=store.history(session_id))
    if attempts:
        reply.attempts = [attempt_info(r, with_result=False) for r in store.conn.execute(
            "SELECT a.id, a.task_id, a.n, a.agent_id, a.state, a.started_at, a.ended_at,"
            " a.applied FROM attempts a JOIN tasks t ON t.id = a.task_id"
            " WHERE t.session_id=? ORDER BY a.started_at", (session_id,))]
    return reply


def sessions(store: Store, limit: int) -> SessionListReply:
    return SessionListReply(sessions=[session_info(r) for r in store.sessions(limit)])


def logs(store: Store, task_id: str) -> TaskLogsReply:
    task = store.task(task_id)
    if task is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no task {task_id!r}")
    rows = store.conn.execute("SELECT * FROM attempts WHERE task_id=? ORDER BY n",
                              (task.id,)).fetchall()
    attempts = [attempt_info(r) for r in rows]
    return TaskLogsReply(task=task_info(task), attempts=attempts)


def agent_stats(store: Store, since: float) -> AgentStatsReply:
    """Each agent's attempts that ended with a verdict since ``since`` (not lost,
    interrupted or cancelled ones: those say nothing of the agent)."""
    rows = store.conn.execute(
        "SELECT agent_id, COUNT(*) AS n, SUM(state = 'succeeded') AS ok,"
        " SUM(COALESCE(json_extract(result, '$.duration_s'), 0)) AS busy FROM attempts"
        " WHERE state IN ('succeeded', 'failed', 'timed_out') AND agent_id != ''"
        " AND ended_at >= ? GROUP BY agent_id", (since,))
    return AgentStatsReply(agents={r["agent_id"]: AgentRecord(
        attempts=r["n"], succeeded=r["ok"] or 0, busy_s=round(r["busy"] or 0.0, 3))
        for r in rows})
