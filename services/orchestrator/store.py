"""Durable orchestrator state: sessions, tasks, attempts, and an audit log of every state
change, in SQLite (WAL). Every mutation is one transaction."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from libs.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, text TEXT NOT NULL, repo TEXT NOT NULL,
    state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', classification TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    base_commit TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id),
    title TEXT NOT NULL, prompt TEXT NOT NULL, role TEXT NOT NULL, cwd TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, timeout_s REAL NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, attempt_id TEXT NOT NULL DEFAULT '',
    agent_id TEXT NOT NULL DEFAULT '', ready_at REAL NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL DEFAULT 0, started_at REAL NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_by_session ON tasks(session_id);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES tasks(id), n INTEGER NOT NULL,
    agent_id TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, started_at REAL NOT NULL,
    ended_at REAL NOT NULL DEFAULT 0, result TEXT NOT NULL DEFAULT '{}',
    applied INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts(task_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, session_id TEXT NOT NULL,
    task_id TEXT NOT NULL DEFAULT '', attempt_id TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL,
    from_state TEXT NOT NULL DEFAULT '', to_state TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id);
"""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class TaskRow:
    id: str
    session_id: str
    title: str
    prompt: str
    role: str
    cwd: str
    priority: int
    timeout_s: float
    state: str
    attempt: int
    attempt_id: str
    agent_id: str
    ready_at: float
    enqueued_at: float
    started_at: float
    result: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "TaskRow":
        data = dict(row)
        data["result"] = json.loads(data["result"])
        return cls(**data)


class Store:
    def __init__(self, path: str):
        self.conn = connect(path)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- sessions ---------------------------------------------------------------------

    def create_session(self, session_id: str, type_: str, text: str, repo: str,
                       classification: str, request: dict[str, Any],
                       tasks: list[dict[str, Any]], base_commit: str = "") -> None:
        now = time.time()
        with self.tx() as c:
            c.execute(
                "INSERT INTO sessions (id, type, text, repo, state, detail, classification,"
                " request, created_at, updated_at, base_commit) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (session_id, type_, text, repo, "running", "", classification,
                 json.dumps(request), now, now, base_commit),
            )
            self._event(c, session_id, kind="session", to_state="running", detail=classification)
            for t in tasks:
                c.execute(
                    "INSERT INTO tasks (id, session_id, title, prompt, role, cwd, priority,"
                    " timeout_s, state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (t["id"], session_id, t["title"], t["prompt"], t["role"], t["cwd"],
                     t["priority"], t["timeout_s"], "ready", now, now),
                )
                self._event(c, session_id, t["id"], kind="task", to_state="ready")

    def session(self, session_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()

    def set_session_state(self, session_id: str, state: str, detail: str = "") -> None:
        with self.tx() as c:
            row = c.execute("SELECT state FROM sessions WHERE id=?", (session_id,)).fetchone()
            c.execute("UPDATE sessions SET state=?, detail=?, updated_at=? WHERE id=?",
                      (state, detail, time.time(), session_id))
            self._event(c, session_id, kind="session", from_state=row["state"] if row else "",
                        to_state=state, detail=detail)

    def running_sessions(self) -> list[str]:
        return [r["id"] for r in self.conn.execute(
            "SELECT id FROM sessions WHERE state='running'")]

    # ---- tasks ------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskRow | None:
        row = self.conn.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
        return TaskRow.from_row(row) if row else None

    def tasks(self, session_id: str | None = None, states: tuple[str, ...] = ()) -> list[TaskRow]:
        sql, params = "SELECT * FROM tasks WHERE 1=1", []
        if session_id is not None:
            sql += " AND session_id=?"
            params.append(session_id)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params.extend(states)
        sql += " ORDER BY priority DESC, created_at"
        return [TaskRow.from_row(r) for r in self.conn.execute(sql, params)]

    def count_active(self) -> int:
        return self.conn.execute(
            "SELECT COUNT(*) FROM tasks WHERE state IN ('queued','assigned','running')"
        ).fetchone()[0]

    def transition(self, task: TaskRow, to_state: str, detail: str = "",
                   **fields: Any) -> None:
        """Move a task to ``to_state`` (and set other columns) with an audit event."""
        now = time.time()
        fields["state"] = to_state
        fields["updated_at"] = now
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE tasks SET {cols} WHERE id=?", (*fields.values(), task.id))
            self._event(c, task.session_id, task.id, fields.get("attempt_id", task.attempt_id),
                        kind="task", from_state=task.state, to_state=to_state, detail=detail)
        for key, value in fields.items():
            setattr(task, key, json.loads(value) if key == "result" else value)

    # ---- attempts ---------------------------------------------------------------------

    def new_attempt(self, task: TaskRow) -> str:
        attempt_id = new_id("att")
        n = task.attempt + 1
        with self.tx() as c:
            c.execute("INSERT INTO attempts (id, task_id, n, state, started_at) VALUES (?,?,?,?,?)",
                      (attempt_id, task.id, n, "queued", time.time()))
        task.attempt = n
        task.attempt_id = attempt_id
        return attempt_id

    def set_attempt(self, attempt_id: str, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE attempts SET {cols} WHERE id=?", (*fields.values(), attempt_id))

    def attempt(self, attempt_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM attempts WHERE id=?", (attempt_id,)).fetchone()

    # ---- audit ------------------------------------------------------------------------

    def history(self, session_id: str, limit: int = 500) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT ts, task_id, attempt_id, kind, from_state, to_state, detail FROM events"
            " WHERE session_id=? ORDER BY id LIMIT ?", (session_id, limit))
        return [dict(r) for r in rows]

    def record(self, session_id: str, kind: str, task_id: str = "", attempt_id: str = "",
               detail: str = "") -> None:
        with self.tx() as c:
            self._event(c, session_id, task_id, attempt_id, kind=kind, detail=detail)

    @staticmethod
    def _event(c: sqlite3.Connection, session_id: str, task_id: str = "", attempt_id: str = "",
               *, kind: str, from_state: str = "", to_state: str = "", detail: str = "") -> None:
        c.execute(
            "INSERT INTO events (ts, session_id, task_id, attempt_id, kind, from_state, to_state,"
            " detail) VALUES (?,?,?,?,?,?,?,?)",
            (time.time(), session_id, task_id, attempt_id, kind, from_state, to_state, detail),
        )
