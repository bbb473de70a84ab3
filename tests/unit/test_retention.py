"""The state database stays bounded and safe: finished sessions past the retention are
pruned with everything of theirs, the audit log is append-only and names who did what,
backups are sound copies taken while writers go on, and only the newest are kept."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

import pytest

from libs import sqlite
from libs.config import load_config
from libs.log import get_logger
from services.orchestrator.audit import AuditLog
from services.orchestrator.maintenance import DAY, Maintenance, backups, prune_sessions
from services.orchestrator.store import Store


def make_session(store: Store, sid: str, state: str, age_days: float, now: float) -> None:
    store.create_session(sid, "RUN", "echo", "/tmp", "", {}, [
        {"id": f"{sid}-t", "title": "t", "prompt": "echo", "role": "worker", "cwd": "/tmp",
         "timeout_s": 5.0}])
    task = store.task(f"{sid}-t")
    store.new_attempt(task)
    store.transition(task, "succeeded" if state != "running" else "running")
    store.conn.execute("UPDATE sessions SET state=?, updated_at=? WHERE id=?",
                       (state, now - age_days * DAY, sid))


def counts(store: Store, sid: str) -> tuple[int, int, int, int]:
    c = store.conn
    return (c.execute("SELECT COUNT(*) FROM sessions WHERE id=?", (sid,)).fetchone()[0],
            c.execute("SELECT COUNT(*) FROM tasks WHERE session_id=?", (sid,)).fetchone()[0],
            c.execute("SELECT COUNT(*) FROM attempts WHERE task_id=?", (f"{sid}-t",)).fetchone()[0],
            c.execute("SELECT COUNT(*) FROM events WHERE session_id=?", (sid,)).fetchone()[0])


def test_only_finished_sessions_past_the_retention_are_pruned_with_all_of_theirs(tmp_path):
    store = Store(str(tmp_path / "o.db"))
    now = 2_000_000_000.0
    for sid, state, age in [("old-ok", "succeeded", 40), ("old-failed", "failed", 31),
                            ("old-running", "running", 90), ("new-ok", "succeeded", 2)]:
        make_session(store, sid, state, age, now)
    assert counts(store, "old-ok")[0:3] == (1, 1, 1) and counts(store, "old-ok")[3] >= 2
    assert prune_sessions(store, now - 30 * DAY, batch=1) == 2  # batches until none left
    assert counts(store, "old-ok") == (0, 0, 0, 0)
    assert counts(store, "old-failed") == (0, 0, 0, 0)
    assert counts(store, "old-running")[:3] == (1, 1, 1)  # never while it runs
    assert counts(store, "new-ok")[:3] == (1, 1, 1)
    assert prune_sessions(store, now - 30 * DAY) == 0


def test_the_audit_log_is_append_only_and_names_who(tmp_path):
    clock = iter(range(100, 200)).__next__
    log = AuditLog(sqlite.connect(tmp_path / "a.db"), clock=lambda: float(clock()))
    # a submit whose submitter registered first gets its who at once
    log.add("register", "cli-1", who="alice@box", detail="client pid 7 on box")
    log.add("submit", "cli-1", session_id="s-1", detail="RUN in /r: make")
    # a cancel that arrived before its register event is named when queried
    log.add("cancel", "cli-2", session_id="s-1", detail="no longer needed")
    log.add("register", "cli-2", who="key ops", detail="client pid 8 on ops-box")
    records = log.query()
    assert [(r.action, r.actor, r.who) for r in records] == [
        ("register", "cli-1", "alice@box"), ("submit", "cli-1", "alice@box"),
        ("cancel", "cli-2", "key ops"), ("register", "cli-2", "key ops")]
    assert [r.action for r in log.query(session_id="s-1")] == ["submit", "cancel"]
    assert [r.actor for r in log.query(action="register", limit=1)] == ["cli-2"]
    assert [r.action for r in log.query(since=102)] == ["cancel", "register"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        log.conn.execute("UPDATE audit SET who='mallory' WHERE actor='cli-1'")
    assert log.prune(102) == 2
    assert [r.ts for r in log.query()] == [102.0, 103.0]


def test_a_backup_taken_while_a_writer_commits_is_a_sound_consistent_copy(tmp_path):
    db = tmp_path / "live.db"
    conn = sqlite.connect(db)
    conn.execute("CREATE TABLE rows (n INTEGER PRIMARY KEY, pad TEXT)")
    stop = threading.Event()

    def write() -> None:
        writer = sqlite.connect(db)
        n = 0
        while not stop.is_set():
            n += 1
            writer.execute("INSERT INTO rows (n, pad) VALUES (?, ?)", (n, "x" * 500))
        writer.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0] < 2000:
            pass  # wait-ok: the writer is running; copy once it has written a good deal
        copies = [tmp_path / f"copy-{i}.db" for i in range(3)]
        for copy in copies:
            assert sqlite.backup(db, copy) > 0
    finally:
        stop.set()
        thread.join(10)
    for copy in copies:
        assert sqlite.check(copy, ("rows",)) == ""
        got = sqlite3.connect(copy)
        count, top = got.execute("SELECT COUNT(*), MAX(n) FROM rows").fetchone()
        assert count == top > 0  # one instant: every row up to the newest, no gaps
        got.close()
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    assert "not a usable SQLite database" in sqlite.check(tmp_path / "junk.db")
    assert "no sessions table" in sqlite.check(copies[0], ("sessions",))
    with pytest.raises(sqlite.DatabaseError, match="no database at"):
        sqlite.backup(tmp_path / "missing.db", tmp_path / "x.db")


def test_automatic_backups_come_when_due_and_only_the_newest_are_kept(tmp_path):
    config = load_config(overrides={"data_dir": str(tmp_path), "orchestrator": {
        "backup_interval_hours": 1, "backup_keep": 2, "retention_days": 0}})
    store = Store(str(tmp_path / "orchestrator.db"))
    now = [1_000_000.0]
    audit = AuditLog(store.conn, clock=lambda: now[0])
    m = Maintenance(config, store, audit, get_logger("test"), clock=lambda: now[0])

    async def rounds() -> list[int]:
        kept = []
        for step in (0, 600, 3000, 3700, 7400, 11100):  # seconds after the start
            now[0] = 1_000_000.0 + step
            if m.backup_due(now[0]):
                path = await m.backup(now[0])
                assert path is not None
                os.utime(path, (now[0], now[0]))  # a backup's time is its file's time
            kept.append(len(backups(m.backup_dir)))
        return kept

    assert asyncio.run(rounds()) == [1, 1, 1, 2, 2, 2]
    for path in backups(m.backup_dir):
        assert sqlite.check(path, ("sessions", "audit")) == ""
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [r.action for r in audit.query()] == ["backup"] * 4
