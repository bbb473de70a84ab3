"""Durable orchestrator state: sessions, tasks, attempts, and an audit log of every state
change, in SQLite (WAL). Every mutation is one transaction (``Store.tx``; how a turn's
mutations share one, and what waits for its commit: ``transactions``)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from libs.ids import ordered_id
from libs.sqlite import connect
from services.orchestrator.transactions import Transactions

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, text TEXT NOT NULL, repo TEXT NOT NULL,
    state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', classification TEXT NOT NULL DEFAULT '',
    request TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    base_commit TEXT NOT NULL DEFAULT '', template TEXT NOT NULL DEFAULT '{}',
    gates TEXT NOT NULL DEFAULT '{}', budget_usd REAL, max_parallel INTEGER,
    cost_usd REAL NOT NULL DEFAULT 0, report TEXT NOT NULL DEFAULT '{}',
    plan_rounds INTEGER NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id),
    title TEXT NOT NULL, prompt TEXT NOT NULL, role TEXT NOT NULL, cwd TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0, timeout_s REAL NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, attempt_id TEXT NOT NULL DEFAULT '',
    agent_id TEXT NOT NULL DEFAULT '', ready_at REAL NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL DEFAULT 0, started_at REAL NOT NULL DEFAULT 0,
    result TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'run', key TEXT NOT NULL DEFAULT '',
    depends_on TEXT NOT NULL DEFAULT '[]', parent TEXT NOT NULL DEFAULT '',
    base TEXT NOT NULL DEFAULT '', executor TEXT NOT NULL DEFAULT '',
    isolate INTEGER NOT NULL DEFAULT 1, tier INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, priority DESC, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_session ON tasks(session_id);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES tasks(id), n INTEGER NOT NULL,
    agent_id TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, started_at REAL NOT NULL,
    ended_at REAL NOT NULL DEFAULT 0, result TEXT NOT NULL DEFAULT '{}',
    applied INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS attempts_by_task ON attempts(task_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, session_id TEXT NOT NULL,
    task_id TEXT NOT NULL DEFAULT '', attempt_id TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL,
    from_state TEXT NOT NULL DEFAULT '', to_state TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id);
"""

#: columns added after a database may already exist: table -> {column: declaration}
ADDED_COLUMNS = {"sessions": {"deadline_at": "REAL"}}
#: indexes made after those columns (a database of any earlier version gains them)
ADDED_INDEXES = ["CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions(created_at)"]


JSON_COLUMNS = ("result", "depends_on", "meta")
EVENT_INSERT = ("INSERT INTO events (ts, session_id, task_id, attempt_id, kind, from_state,"
                " to_state, detail) VALUES (?,?,?,?,?,?,?,?)")
#: one step of a task through its states: (state, detail, when or None for now, columns)
Step = tuple[str, str, Optional[float], dict[str, Any]]
TASK_DEFAULTS: dict[str, Any] = {
    "priority": 0, "kind": "run", "key": "", "depends_on": [], "parent": "", "base": "",
    "executor": "", "isolate": 1, "tier": 0, "meta": {}, "state": "ready",
}


def _open_copy(path: str) -> str:
    """A /proc path through which this process still reads ``path``'s unlinked file."""
    target = os.path.abspath(path) + " (deleted)"
    try:
        for fd in os.listdir("/proc/self/fd"):
            link = f"/proc/self/fd/{fd}"
            try:
                if os.readlink(link) == target:
                    return f"/proc/{os.getpid()}/fd/{fd}"
            except OSError:
                continue
    except OSError:
        pass
    return ""


def new_id(prefix: str) -> str:
    return ordered_id(prefix)


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
    result_json: str  # the last result as stored; ``result`` decodes it when first read
    created_at: float
    updated_at: float
    kind: str = "run"
    key: str = ""
    depends_on: list[str] = field(default_factory=list)
    parent: str = ""
    base: str = ""
    executor: str = ""
    isolate: int = 1
    tier: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    _result: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def result(self) -> dict[str, Any]:
        """The last attempt's result (it can hold tens of KB of output and most reads of
        a task never look at it: decoded on first use)."""
        if self._result is None:
            self._result = json.loads(self.result_json)
        return self._result

    @result.setter
    def result(self, value: dict[str, Any]) -> None:
        self._result = value

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "TaskRow":
        data = dict(row)
        data["result_json"] = data.pop("result")
        data["depends_on"] = _load(data["depends_on"], "[]", list)
        data["meta"] = _load(data["meta"], "{}", dict)
        return cls(**data)


def _load(text: str, empty: str, kind: type) -> Any:
    """JSON ``text`` decoded (most tasks hold the empty value: no parse for it)."""
    return kind() if text == empty else json.loads(text)


def _as_stored(columns: dict[str, Any]) -> dict[str, Any]:
    """A session's column values as stored: dicts and lists as JSON."""
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in columns.items()}


class Store(Transactions):
    def __init__(self, path: str, clock: Callable[[], float] = time.time):
        self.path = path
        self.clock = clock  # the timestamps in the database (created_at, updated_at, ...)
        super().__init__(connect(path))
        self.conn.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            have = {r["name"] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns.items():
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        for index in ADDED_INDEXES:
            self.conn.execute(index)
        self._identity = self._file_identity()
        #: session rows read in this turn of the loop (a turn reads one several times);
        #: dropped as a session is written, and all at the turn's end, commit or rollback
        self._sessions: dict[str, sqlite3.Row | None] = {}
        self._forget_soon = False
        self.on_turn_end.append(self._sessions.clear)
        self.on_rollback.append(self._sessions.clear)

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def problem(self) -> str:
        """Why the open database is no longer the file at its path ("" while it is): a
        deleted or replaced file would swallow every write unseen."""
        if self._identity is None:
            return ""
        try:
            identity = self._file_identity()
        except FileNotFoundError:
            how = "was deleted"
        except OSError as exc:
            how = f"cannot be checked ({exc})"
        else:
            if identity == self._identity:
                return ""
            how = "was replaced by another file"
        held = _open_copy(self.path)
        rescue = f"; its last state is still readable at {held} until this process ends" \
            if held else ""
        return f"the state database {self.path} {how} while in use{rescue}"

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.conn.close()

    # ---- sessions ---------------------------------------------------------------------

    def create_session(self, session_id: str, type_: str, text: str, repo: str,
                       classification: str, request: dict[str, Any],
                       tasks: list[dict[str, Any]], base_commit: str = "",
                       **columns: Any) -> None:
        """Insert a session (extra ``columns``: template, gates, budget_usd, max_parallel,
        priority; dicts are stored as JSON) and its first tasks, in one transaction."""
        now = self.clock()
        cols = {"id": session_id, "type": type_, "text": text, "repo": repo,
                "state": "running", "detail": "", "classification": classification,
                "request": request, "created_at": now, "updated_at": now,
                "base_commit": base_commit, **columns}
        cols = _as_stored(cols)
        self._sessions.pop(session_id, None)
        with self.tx() as c:
            c.execute(f"INSERT INTO sessions ({', '.join(cols)}) VALUES "
                      f"({', '.join('?' * len(cols))})", tuple(cols.values()))
            self._event(c, session_id, kind="session", to_state="running", detail=classification)
            for t in tasks:
                self._insert_task(c, session_id, t, now)

    def add_tasks(self, session_id: str, tasks: list[dict[str, Any]]) -> None:
        now = self.clock()
        with self.tx() as c:
            for t in tasks:
                self._insert_task(c, session_id, t, now)

    def _insert_task(self, c: sqlite3.Connection, session_id: str, task: dict[str, Any],
                     now: float) -> None:
        row = {**TASK_DEFAULTS, **task, "session_id": session_id, "created_at": now,
               "updated_at": now}
        row = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in row.items()}
        c.execute(f"INSERT INTO tasks ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                  tuple(row.values()))
        self._event(c, session_id, row["id"], kind="task", to_state=row["state"],
                    detail=f"{row['kind']} {row['key']}".strip())

    def update_session(self, session_id: str, **columns: Any) -> None:
        cols = _as_stored(columns)
        cols["updated_at"] = self.clock()
        self._sessions.pop(session_id, None)
        with self.tx() as c:
            c.execute(f"UPDATE sessions SET {', '.join(f'{k}=?' for k in cols)} WHERE id=?",
                      (*cols.values(), session_id))

    def find_session(self, **where: Any) -> sqlite3.Row | None:
        """The newest session matching all ``column=value`` pairs."""
        cond = " AND ".join(f"{k}=?" for k in where)
        return self.conn.execute(f"SELECT * FROM sessions WHERE {cond} ORDER BY created_at DESC"
                                 " LIMIT 1", tuple(where.values())).fetchone()

    def sessions(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM sessions ORDER BY created_at DESC LIMIT ?",
                                 (limit,)).fetchall()

    def session(self, session_id: str) -> sqlite3.Row | None:
        if session_id in self._sessions:
            return self._sessions[session_id]
        row = self.conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        if self._keep_for_turn():
            self._sessions[session_id] = row
        return row

    def _keep_for_turn(self) -> bool:
        """Whether a row read now may be kept until this turn of the loop ends (with group
        commit on; every write of a session goes through this class and drops it)."""
        if self._group_open or self._forget_soon:
            return True
        if not self.group_commit:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_soon(self._forget)
        self._forget_soon = True
        return True

    def _forget(self) -> None:
        self._forget_soon = False
        self._sessions.clear()

    def delete_sessions(self, ids: list[str]) -> None:
        """Delete sessions with their tasks, attempts and history, in one transaction."""
        some = ",".join("?" * len(ids))
        self._sessions.clear()
        with self.tx() as c:
            c.execute(f"DELETE FROM attempts WHERE task_id IN "
                      f"(SELECT id FROM tasks WHERE session_id IN ({some}))", ids)
            c.execute(f"DELETE FROM tasks WHERE session_id IN ({some})", ids)
            c.execute(f"DELETE FROM events WHERE session_id IN ({some})", ids)
            c.execute(f"DELETE FROM sessions WHERE id IN ({some})", ids)

    def set_session_state(self, session_id: str, state: str, detail: str = "",
                          prev: str | None = None, **columns: Any) -> None:
        """Move a session to ``state`` with its history entry (``prev``: its state as the
        caller has just read it, else read here), setting other ``columns`` with it."""
        self._sessions.pop(session_id, None)
        cols = _as_stored(columns)
        cols.update(state=state, detail=detail, updated_at=self.clock())
        with self.tx() as c:
            if prev is None:
                row = c.execute("SELECT state FROM sessions WHERE id=?",
                                (session_id,)).fetchone()
                prev = row["state"] if row else ""
            c.execute(f"UPDATE sessions SET {', '.join(f'{k}=?' for k in cols)} WHERE id=?",
                      (*cols.values(), session_id))
            self._event(c, session_id, kind="session", from_state=prev, to_state=state,
                        detail=detail)

    def overdue_sessions(self, now: float) -> list[str]:
        """Running sessions whose deadline has passed."""
        return [r["id"] for r in self.conn.execute(
            "SELECT id FROM sessions WHERE state='running' AND deadline_at IS NOT NULL"
            " AND deadline_at <= ?", (now,))]

    def running_sessions(self) -> list[str]:
        return [r["id"] for r in self.conn.execute(
            "SELECT id FROM sessions WHERE state='running'")]

    # ---- tasks ------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskRow | None:
        row = self.conn.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
        return TaskRow.from_row(row) if row else None

    def tasks(self, session_id: str | None = None, states: tuple[str, ...] = (),
              ready_by: float | None = None, limit: int | None = None,
              offset: int = 0) -> list[TaskRow]:
        """Tasks, highest priority then oldest first; ``ready_by`` keeps those whose backoff
        ends by then; ``limit``/``offset`` page through them."""
        sql, params = "SELECT * FROM tasks WHERE 1=1", []
        if session_id is not None:
            sql += " AND session_id=?"
            params.append(session_id)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params.extend(states)
        if ready_by is not None:
            sql += " AND ready_at <= ?"
            params.append(ready_by)
        sql += " ORDER BY priority DESC, created_at"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        return [TaskRow.from_row(r) for r in self.conn.execute(sql, params)]

    def tasks_with_lost_attempts(self) -> list[TaskRow]:
        """Unfinished tasks that remember a lost attempt whose agent may come back."""
        return [TaskRow.from_row(r) for r in self.conn.execute(
            "SELECT * FROM tasks WHERE state IN ('ready','queued','assigned','running')"
            " AND json_extract(meta, '$.lost.attempt') IS NOT NULL")]

    def count_active(self, session_id: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM tasks WHERE state IN ('queued','assigned','running')"
        if session_id is None:
            return self.conn.execute(sql).fetchone()[0]
        return self.conn.execute(sql + " AND session_id=?", (session_id,)).fetchone()[0]

    def transition(self, task: TaskRow, to_state: str, detail: str = "", *,
                   at: float | None = None, **fields: Any) -> None:
        """Move a task to ``to_state`` (and set other columns) with an audit event (``at``:
        when it happened, if earlier than now)."""
        self.transitions(task, [(to_state, detail, at, fields)])

    def transitions(self, task: TaskRow, steps: list[Step]) -> None:
        """Move a task through several states at once, each step (state, detail, at,
        columns) with its audit event: one UPDATE with the last value of each column."""
        now = self.clock()
        merged: dict[str, Any] = {}
        events = []
        state = task.state
        for to_state, detail, at, fields in steps:
            merged.update(fields)
            merged["state"] = to_state
            events.append((now if at is None else at, task.session_id, task.id,
                           merged.get("attempt_id", task.attempt_id), "task", state, to_state,
                           detail))
            state = to_state
        merged["updated_at"] = now
        stored = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in merged.items()}
        cols = ", ".join(f"{k}=?" for k in stored)
        with self.tx() as c:
            c.execute(f"UPDATE tasks SET {cols} WHERE id=?", (*stored.values(), task.id))
            c.executemany(EVENT_INSERT, events)
        for key, value in merged.items():
            setattr(task, key, value)

    def update_task(self, task: TaskRow, **fields: Any) -> None:
        """Change columns other than the state (no audit event)."""
        stored = {k: json.dumps(v) if k in JSON_COLUMNS else v for k, v in fields.items()}
        with self.tx() as c:
            c.execute(f"UPDATE tasks SET {', '.join(f'{k}=?' for k in stored)} WHERE id=?",
                      (*stored.values(), task.id))
        for key, value in fields.items():
            setattr(task, key, value)

    # ---- attempts ---------------------------------------------------------------------

    def new_attempt(self, task: TaskRow) -> str:
        attempt_id = new_id("att")
        n = task.attempt + 1
        with self.tx() as c:
            c.execute("INSERT INTO attempts (id, task_id, n, state, started_at) VALUES (?,?,?,?,?)",
                      (attempt_id, task.id, n, "queued", self.clock()))
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

    def _event(self, c: sqlite3.Connection, session_id: str, task_id: str = "", attempt_id: str = "",
               *, kind: str, from_state: str = "", to_state: str = "", detail: str = "",
               at: float | None = None) -> None:
        c.execute(EVENT_INSERT, (self.clock() if at is None else at, session_id, task_id,
                                 attempt_id, kind, from_state, to_state, detail))
