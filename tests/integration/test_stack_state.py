"""Audit, backup and restore on a real stack: `ccaa audit` names who submitted, cancelled,
registered and was refused; `ccaa backup` copies the live database; automatic backups
keep the newest few; `ccaa restore` refuses while the stack runs and puts a backup back
once it is down."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sqlite3
import time

import psutil
import pytest

from tests.conftest import _alive
from tests.integration.test_stack_e2e import CONFIG, ccaa

EXTRA = """
[orchestrator]
backup_interval_hours = 0.0003
backup_keep = 2
maintenance_interval = 0.3
"""


def tree_of(pidfile) -> list[int]:
    supervisord = psutil.Process(int(pidfile.read_text()))
    return [supervisord.pid] + [c.pid for c in supervisord.children(recursive=True)]


def audit(config, *args):
    out = ccaa("audit", "--json", *args, config=config)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(240)
def test_audit_backup_and_restore(tmp_path):
    config = tmp_path / "ccaa.toml"
    data = tmp_path / "data"
    config.write_text(CONFIG.format(data=data, tmp=tmp_path) + EXTRA)
    repo = tmp_path / "repo"
    repo.mkdir()
    pidfile = data / "run" / "supervisord.pid"
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    tree: list[int] = []
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        tree = tree_of(pidfile)
        done = ccaa("submit", "RUN", "true", "--repo", str(repo), "--wait", config=config)
        assert done.returncode == 0, done.stdout + done.stderr
        first = done.stdout.split()[1]
        slow = ccaa("submit", "RUN", "sleep 60", "--repo", str(repo), config=config)
        second = slow.stdout.split()[1]
        assert ccaa("cancel", second, "--reason", "wrong command", config=config).returncode == 0
        refused = ccaa("status", "--set", 'communication.token="guess"', config=config)
        assert refused.returncode == 3

        records = audit(config)
        by = {(r["action"], r["session_id"]): r for r in records}
        submit = by[("submit", first)]
        assert submit["actor"].startswith("cli-") and submit["who"] == me
        assert "RUN in" in submit["detail"]
        cancel = by[("cancel", second)]
        assert cancel["who"] == me and cancel["detail"] == "wrong command"
        registered = {r["actor"]: r for r in records if r["action"] == "register"}
        assert {"commands", "orchestrator", "distributor", "reporter",
                f"controller@{socket.gethostname()}"} <= set(registered)
        assert sum(1 for name in registered if name.startswith("agent-")) == 2
        assert registered["orchestrator"]["who"] == me
        [refusal] = [r for r in records if r["action"] == "refused"]
        assert "token" in refusal["detail"] and refusal["who"] == me
        assert [r["session_id"] for r in audit(config, "--session", first)] == [first]
        assert audit(config, "--since", "2099-01-01") == []
        table = ccaa("audit", "--action", "cancel", config=config).stdout
        assert "wrong command" in table and me in table

        # a live backup, then more work that the backup does not have
        copy = tmp_path / "copy.db"
        backed = ccaa("backup", str(copy), config=config)
        assert backed.returncode == 0, backed.stderr
        assert "backed up 2 session(s)" in backed.stdout
        later = ccaa("submit", "RUN", "true", "--repo", str(repo), "--wait", config=config)
        third = later.stdout.split()[1]
        # automatic backups: several made by now, only the newest two kept
        backups = data / "backups"
        deadline = time.monotonic() + 30
        while "backup" not in {r["action"] for r in audit(config) if "automatic" in r["detail"]}:
            assert time.monotonic() < deadline, "no automatic backup"
            time.sleep(0.2)  # wait-ok: polling the audit log under a deadline
        assert 1 <= len(list(backups.glob("orchestrator-*.db"))) <= 2

        running = ccaa("restore", str(copy), config=config)
        assert running.returncode == 2 and "stop it first" in running.stderr, running.stderr
    finally:
        down = ccaa("down", config=config)
        leftover = [p for p in tree if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert down.returncode == 0 and leftover == []

    junk = tmp_path / "junk.db"
    junk.write_text("no database here")
    bad = ccaa("restore", str(junk), config=config)
    assert bad.returncode == 2 and "will not restore" in bad.stderr
    restored = ccaa("restore", str(copy), config=config)
    assert restored.returncode == 0, restored.stderr
    assert "restored 2 session(s)" in restored.stdout
    assert list(data.glob("orchestrator.db.replaced-*"))  # the replaced state is kept
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        tree = tree_of(pidfile)
        listing = ccaa("sessions", config=config).stdout
        assert first in listing and second in listing and third not in listing
        actions = [r["action"] for r in audit(config)]
        assert "backup" in actions and actions.count("restore") == 1
    finally:
        down = ccaa("down", config=config)
        leftover = [p for p in tree if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert leftover == []
    conn = sqlite3.connect(data / "orchestrator.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
