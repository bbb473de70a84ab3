"""`ccaa audit`, `ccaa backup`, `ccaa restore`: the audit log and the state database."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from services.cli.args import emit
from libs import sqlite
from libs.client import BusClient
from libs.config import SystemConfig
from libs.peer import local_user
from protocols.audit import AuditQuery, AuditReply
from services.orchestrator.audit import AuditLog, who_of

#: tables a state database must have to be restored
TABLES = ("sessions", "tasks", "attempts", "events")


def since(text: str) -> float:
    """``30m``, ``2h``, ``7d`` ago, or an ISO date/time -> unix time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units:
        try:
            return time.time() - float(text[:-1]) * units[text[-1]]
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (try 30m, 2h, 7d or 2026-11-25T10:00)") from None


def database(config: SystemConfig) -> Path:
    return config.data_path() / "orchestrator.db"


def audit(config: SystemConfig, args: argparse.Namespace) -> int:
    async def ask() -> AuditReply:
        async with BusClient(config.communication) as bus:
            reply = await bus.request("orchestrator", AuditQuery(
                since=args.since or 0.0, session_id=args.session or "",
                action=args.action or "", limit=args.limit))
        assert isinstance(reply.body, AuditReply)
        return reply.body

    records = asyncio.run(ask()).records
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return 0
    if not records:
        print("no audit records match")
        return 0
    print(f"{'time':<19}  {'action':<8}  {'actor':<24}  {'who':<22}  {'session':<13}  detail")
    for r in records:
        stamp = datetime.fromtimestamp(r.ts).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp:<19}  {r.action:<8}  {r.actor[:24]:<24}  {r.who[:22]:<22}  "
              f"{r.session_id or '-':<13}  {r.detail}")
    return 0


def _note(db: Path, action: str, detail: str) -> None:
    """An audit record written by this command (the local user is who)."""
    conn = sqlite.connect(db)
    try:
        AuditLog(conn).add(action, "ccaa " + action,
                           who=who_of("", local_user(), socket.gethostname()), detail=detail)
    finally:
        conn.close()


def backup(config: SystemConfig, target: str, args: argparse.Namespace | None = None) -> int:
    db = database(config)
    dest = Path(target).expanduser().resolve()
    if dest.is_dir():
        dest = dest / f"ccaa-{time.strftime('%Y%m%d-%H%M%S')}.db"
    size = sqlite.backup(db, dest)
    sessions = _count(dest)
    _note(db, "backup", f"{dest} ({size} bytes, {sessions} sessions)")
    emit(args, {"path": str(dest), "bytes": size, "sessions": sessions},
         f"backed up {sessions} session(s), {size / 1e6:.1f} MB, to {dest}")
    return 0


def restore(config: SystemConfig, source: str, running: bool,
            args: argparse.Namespace | None = None) -> int:
    db = database(config)
    src = Path(source).expanduser().resolve()
    problem = sqlite.check(src, TABLES)
    if problem:
        raise sqlite.DatabaseError(f"will not restore: {problem}")
    held = [pid for pid in sqlite.holders(db) if pid != os.getpid()] if db.exists() else []
    if running or held:
        who = f" (open in pid {', '.join(map(str, held))})" if held else ""
        raise sqlite.DatabaseError(f"the stack is running{who}; stop it first with `ccaa down`, "
                                   "then restore")
    replaced = ""
    if db.exists():
        suffix = f".replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        for extra in ("", "-wal", "-shm"):
            part = Path(f"{db}{extra}")
            if part.exists():
                part.rename(f"{db}{suffix}{extra}")
        replaced = f"{db}{suffix}"
    sqlite.backup(src, db)
    _note(db, "restore", f"from {src}" + (f"; the replaced database is {replaced}"
                                          if replaced else ""))
    emit(args, {"restored_from": str(src), "database": str(db), "sessions": _count(db),
                "replaced": replaced or None},
         f"restored {_count(db)} session(s) from {src} into {db}",
         *([f"the database it replaced is kept at {replaced}"] if replaced else []))
    return 0


def _count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # never changes a backup file
    try:
        return conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    finally:
        conn.close()
