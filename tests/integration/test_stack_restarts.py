"""Agents going away mid-run are not the task's fault: a controller restart and a whole
`ccaa down` / `ccaa up` in the middle of a session re-queue the running work, and every
task still runs to completion exactly once."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from libs.config import load_config
from services.cli import stack
from tests.conftest import _alive
from tests.integration.test_stack_e2e import CONFIG as STACK_CONFIG, ccaa

CONFIG = STACK_CONFIG + """
[orchestrator]
reconcile_interval = 0.5
"""

JOBS = 3


def show(sid: str, config: Path) -> dict:
    out = ccaa("show", sid, "--json", config=config)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def wait_running(sids: list[str], config: Path, n: int, min_attempt: int,
                 timeout: float = 60) -> None:
    """Until ``n`` of the sessions' tasks run an attempt numbered ``min_attempt`` or later."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = [show(s, config)["tasks"][0] for s in sids]
        running = [t for t in tasks if t["state"] == "running" and t["attempt"] >= min_attempt]
        if len(running) >= n:
            return
        assert time.monotonic() < deadline, f"not {n} running: {tasks}"
        time.sleep(0.2)  # wait-ok: polling the CLI under a deadline


def stack_tree(pidfile: Path) -> list[int]:
    try:
        sup = psutil.Process(int(pidfile.read_text()))
        return [sup.pid] + [c.pid for c in sup.children(recursive=True)]
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return []


@pytest.mark.timeout(300)
def test_controller_restart_and_stack_down_up_mid_session_rerun_work_once(tmp_path):
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    marks = tmp_path / "marks"
    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    seen: set[int] = set()
    try:
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        seen.update(stack_tree(pidfile))
        # each job appends its name once it has run to the end (3 s); an interrupted run
        # leaves no mark
        sids = []
        for i in range(JOBS):
            out = ccaa("submit", "RUN", f"sleep 3 && echo job-{i} >> {marks}",
                       "--repo", str(repo), config=config)
            assert out.returncode == 0, out.stderr
            sids.append(out.stdout.split()[1])
        wait_running(sids, config, n=2, min_attempt=1)

        # the controller restarts: its agents stop, their attempts are interrupted
        restart = stack._supervisorctl(load_config(str(config)), "restart", "controller")
        assert "started" in restart.stdout, restart.stdout + restart.stderr
        seen.update(stack_tree(pidfile))
        wait_running(sids, config, n=1, min_attempt=2)
        assert not marks.exists() or len(marks.read_text().split()) < JOBS

        # the whole stack goes down and comes back mid-run
        seen.update(stack_tree(pidfile))
        down = ccaa("down", config=config)
        assert down.returncode == 0 and "ccaa is down" in down.stdout, down.stderr
        up = ccaa("up", config=config)
        assert up.returncode == 0, up.stdout + up.stderr
        seen.update(stack_tree(pidfile))

        deadline = time.monotonic() + 120
        while True:
            states = [show(s, config) for s in sids]
            if all(st["session"]["state"] != "running" for st in states):
                break
            assert time.monotonic() < deadline, [st["session"] for st in states]
            time.sleep(0.3)  # wait-ok: polling the CLI under a deadline
        for st in states:
            assert st["session"]["state"] == "succeeded", st["session"]
        # every job ran to its end exactly once
        assert sorted(marks.read_text().split()) == [f"job-{i}" for i in range(JOBS)]
        tasks = [st["tasks"][0] for st in states]
        interrupted = [t for t in tasks if t["attempt"] > 1]
        assert interrupted, tasks
        for t in interrupted:
            details = [h["detail"] for st in states for h in st["history"]
                       if h["task_id"] == t["task_id"]]
            assert any(d.startswith("run again: agent") for d in details), details
            assert not any("retry after" in d for d in details), details
    finally:
        seen.update(stack_tree(pidfile))
        ccaa("down", config=config)
        leftover = [p for p in seen if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert leftover == []
