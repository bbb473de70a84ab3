"""The audit log: append-only records of who did what — submit, cancel, register,
refusal, key change, prune, backup, restore — in the state database, beside the sessions.

"Who" is the key a peer registered with under CurveZMQ, else the user@host it registered
with; a submit or cancel names the peer (its name verified by the hub) and gets the who of
that peer's registration.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable

from protocols import Message
from protocols.audit import AuditRecord
from protocols.events import KeysChanged, PeerEvent
from protocols.peer import PeerInfo

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, action TEXT NOT NULL,
    actor TEXT NOT NULL, who TEXT NOT NULL DEFAULT '', session_id TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit(ts);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit(actor, action);
CREATE INDEX IF NOT EXISTS audit_by_session ON audit(session_id);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

MAX_DETAIL = 500


def _peer_detail(kind: str, role: str, pid: int, host: str) -> str:
    return f"{kind} {role}".strip() + f" pid {pid} on {host or '?'}"


def who_of(key: str, user: str, host: str) -> str:
    """How a registration is named in the log: its key, else user@host."""
    if key:
        return f"key {key}"
    return f"{user or '?'}@{host or '?'}"


class AuditLog:
    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time):
        self.conn = conn
        self.clock = clock
        conn.executescript(SCHEMA)
        #: actor -> (who, ts) of its newest registration (a submit asks for it each time);
        #: dropped as the actor registers again, and all on a prune or rollback (``forget``)
        self._who: dict[str, tuple[str, float]] = {}

    def forget(self) -> None:
        """Drop what was read of the registrations (the writes behind it may be undone)."""
        self._who.clear()

    def add(self, action: str, actor: str, who: str = "", session_id: str = "",
            detail: str = "", ts: float | None = None) -> None:
        now = self.clock() if ts is None else ts
        if action == "register":
            self._who.pop(actor, None)
        elif not who:
            who = self._registered_as(actor, now)
        self.conn.execute(
            "INSERT INTO audit (ts, action, actor, who, session_id, detail) VALUES (?,?,?,?,?,?)",
            (now, action, actor[:200], who[:200], session_id, detail[:MAX_DETAIL]))

    def query(self, since: float = 0.0, session_id: str = "", action: str = "",
              limit: int = 200) -> list[AuditRecord]:
        """The newest ``limit`` records matching, oldest first."""
        where, params = ["ts >= ?"], [since]
        if session_id:
            where.append("session_id = ?")
            params.append(session_id)
        if action:
            where.append("action = ?")
            params.append(action)
        rows = self.conn.execute(
            f"SELECT ts, action, actor, who, session_id, detail FROM audit "
            f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        records = []
        for row in reversed(rows):
            data: dict[str, Any] = dict(row)
            if not data["who"] and data["action"] != "register":
                # the register record may have come in after the request
                data["who"] = self._registered_as(data["actor"], data["ts"] + 60)
            records.append(AuditRecord(**data))
        return records

    def has_register(self, actor: str, around: float, slack: float = 1.0) -> bool:
        """Whether a registration of ``actor`` at ``around`` (give or take) is recorded."""
        return self.conn.execute(
            "SELECT 1 FROM audit WHERE actor = ? AND action = 'register' AND ts BETWEEN ? AND ?",
            (actor, around - slack, around + slack)).fetchone() is not None

    def hub_event(self, msg: Message) -> None:
        """A registration, refusal or key change the hub published."""
        body = msg.body
        if isinstance(body, KeysChanged):
            self.add("keys", msg.header.src, detail=f"added: {', '.join(body.added) or '-'}"
                     f"; removed: {', '.join(body.removed) or '-'}")
        elif isinstance(body, PeerEvent) and body.state in ("registered", "refused"):
            registered = body.state == "registered"
            if registered and self.has_register(body.name, msg.header.ts):
                return  # already recorded from the registry
            detail = _peer_detail(body.kind, body.role, body.pid, body.host)
            if body.reason:
                detail += f": {body.reason}"
            self.add("register" if registered else "refused", body.name,
                     who=who_of(body.key, body.user, body.host), detail=detail,
                     ts=msg.header.ts if registered else None)

    def registry(self, peers: list[PeerInfo]) -> int:
        """Record the registrations in the hub's registry not recorded yet (those published
        before the orchestrator listened); returns how many were missing."""
        missing = 0
        for p in peers:
            if not self.has_register(p.name, p.registered_at):
                self.add("register", p.name, who=who_of(p.key, p.user, p.host),
                         detail=_peer_detail(p.kind.value, p.role, p.pid, p.host),
                         ts=p.registered_at)
                missing += 1
        return missing

    def prune(self, cutoff: float) -> int:
        self.forget()
        return self.conn.execute("DELETE FROM audit WHERE ts < ?", (cutoff,)).rowcount

    def _registered_as(self, actor: str, before: float) -> str:
        """The who of ``actor``'s newest registration at or before ``before``."""
        known = self._who.get(actor)
        if known is not None and known[1] <= before:
            return known[0]
        newest = self.conn.execute(
            "SELECT who, ts FROM audit WHERE actor = ? AND action = 'register' "
            "ORDER BY id DESC LIMIT 1", (actor,)).fetchone()
        if newest is None:
            self._who[actor] = ("", float("-inf"))  # (none yet: it would be dropped)
            return ""
        if newest[1] <= before:  # (the usual case; else a registration dated later)
            self._who[actor] = (newest[0], newest[1])
            return newest[0]
        row = self.conn.execute(
            "SELECT who FROM audit WHERE actor = ? AND action = 'register' AND ts <= ? "
            "ORDER BY id DESC LIMIT 1", (actor, before)).fetchone()
        return row[0] if row else ""
