"""Keeping the state database bounded and safe: finished sessions older than
``orchestrator.retention_days`` and audit records older than ``audit_retention_days`` are
pruned; every ``backup_interval_hours`` an online backup goes to ``backup_dir``, keeping the
newest ``backup_keep``. Backups run in a thread so the event loop keeps serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

from libs import sqlite
from libs.config import SystemConfig
from libs.log import EventLogger
from protocols.command import TERMINAL_SESSION_STATES
from services.orchestrator.audit import AuditLog
from services.orchestrator.store import Store

DAY = 86400.0
BACKUP_PREFIX = "orchestrator-"
#: sessions removed per transaction (each is short, so requests interleave)
BATCH = 200


def prune_sessions(store: Store, cutoff: float, batch: int = BATCH) -> int:
    """Delete finished sessions last changed before ``cutoff`` with their tasks, attempts
    and history; returns how many went."""
    states = tuple(s.value for s in TERMINAL_SESSION_STATES)
    marks = ",".join("?" * len(states))
    removed = 0
    while True:
        ids = [r[0] for r in store.conn.execute(
            f"SELECT id FROM sessions WHERE state IN ({marks}) AND updated_at < ? LIMIT ?",
            (*states, cutoff, batch))]
        if not ids:
            return removed
        store.delete_sessions(ids)
        removed += len(ids)


def backups(directory: Path) -> list[Path]:
    """Automatic backups in ``directory``, oldest first (names sort by time)."""
    return sorted(directory.glob(f"{BACKUP_PREFIX}*.db"))


class Maintenance:
    def __init__(self, config: SystemConfig, store: Store, audit: AuditLog, log: EventLogger,
                 clock: Callable[[], float] = time.time):
        self.settings = config.orchestrator
        self.store = store
        self.audit = audit
        self.log = log
        self.clock = clock
        self.backup_dir = Path(self.settings.backup_dir).expanduser() \
            if self.settings.backup_dir else config.data_path() / "backups"

    async def run_once(self) -> None:
        now = self.clock()
        s = self.settings
        if s.retention_days > 0:
            pruned = prune_sessions(self.store, now - s.retention_days * DAY)
            if pruned:
                self.log.info("sessions.pruned", count=pruned, older_than_days=s.retention_days)
                self.audit.add("prune", "orchestrator",
                               detail=f"{pruned} finished session(s) older than "
                                      f"{s.retention_days:g} day(s)")
        if s.audit_retention_days > 0:
            gone = self.audit.prune(now - s.audit_retention_days * DAY)
            if gone:
                self.log.info("audit.pruned", count=gone)
        if s.backup_interval_hours > 0 and self.store.path != ":memory:" and self.backup_due(now):
            await self.backup(now)

    def backup_due(self, now: float) -> bool:
        kept = backups(self.backup_dir)
        return not kept or now - kept[-1].stat().st_mtime >= self.settings.backup_interval_hours * 3600

    async def backup(self, now: float) -> Path | None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        dest = self.backup_dir / f"{BACKUP_PREFIX}{stamp}-{int(now * 1000) % 1000:03d}.db"
        try:
            size = await asyncio.to_thread(sqlite.backup, self.store.path, dest)
        except sqlite.DatabaseError as exc:
            self.log.error("backup.failed", error=str(exc))
            return None
        self.log.info("backup.written", path=str(dest), bytes=size)
        self.audit.add("backup", "orchestrator", detail=f"{dest} ({size} bytes, automatic)")
        for old in backups(self.backup_dir)[:-self.settings.backup_keep]:
            old.unlink(missing_ok=True)
        return dest
