"""SQLite in WAL mode: the embedded store for orchestrator state and reporter history."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    # savepoints' journals (and sorts) in memory, not in temporary files: a turn's group
    # transaction holds a savepoint per block, whose journal is written on every change
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


class DatabaseError(Exception):
    """A database file that cannot be read, copied or used; the message says which."""


def backup(src: str | Path, dest: str | Path) -> int:
    """Copy a live database (SQLite's online backup: one consistent instant, writers go
    on) to ``dest`` atomically (a temporary file renamed into place) and check the copy.
    Returns the copy's size in bytes."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise DatabaseError(f"no database at {src}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            target = sqlite3.connect(str(tmp))
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
        problem = check(tmp)
        if problem:
            raise DatabaseError(f"the copy of {src} is not sound: {problem}")
        tmp.chmod(0o600)
        tmp.replace(dest)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot back up {src} to {dest}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest.stat().st_size


def check(path: str | Path, tables: tuple[str, ...] = ()) -> str:
    """Why ``path`` is not a sound SQLite database holding ``tables`` ("" if it is)."""
    if not Path(path).is_file():
        return f"{path} does not exist"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{path} is not a usable SQLite database ({exc})"
    if verdict != "ok":
        return f"{path} fails SQLite's integrity check: {verdict}"
    missing = [t for t in tables if t not in have]
    if missing:
        return f"{path} has no {', '.join(missing)} table (not a ccaa state database?)"
    return ""


def holders(path: str | Path) -> list[int]:
    """Pids of processes that have ``path`` open (those this user may inspect)."""
    target = str(Path(path).resolve())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        found.append(int(pid))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return found
