"""Planned sessions always end: re-planning is bounded per subtask and per session, and a
review that fails or cannot be read is asked again and escalated, never skipped. Driven
through the orchestrator with a fake bus and a real git repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from protocols.command import CommandSubmit, CommandType, SessionCreate
from protocols.task import Outcome
from tests.unit.orchestrator_world import World, scenario

pytestmark = pytest.mark.timeout(60)


def make_repo(path: Path) -> None:
    (path / "README.md").write_text("sample\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base"]):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)


def plan_text(*ids: str) -> str:
    plan = {"subtasks": [{"id": i, "title": f"do {i}", "prompt": f"implement {i}"}
                         for i in ids]}
    return f"```json\n{json.dumps(plan)}\n```"


async def start(w: World, sid: str = "s1") -> None:
    await w.orch.on_session_create(w.msg(SessionCreate(
        session_id=sid, command=CommandSubmit(text="add a feature", repo=w.repo),
        type=CommandType.IMPLEMENT_FEATURE), src="commands"))
    await w.settle()


def queued(w: World, sid: str = "s1", kind: str | None = None) -> list:
    return [t for t in w.store.tasks(sid, states=("queued",)) if kind is None or t.kind == kind]


async def finish(w: World, task, outcome=Outcome.SUCCEEDED, text: str = "", **kw) -> None:
    await w.run(task.id)
    await w.result(task.id, outcome, data={"result": text} if text else {}, **kw)


async def run_until_done(w: World, on_task, limit: int = 300) -> None:
    """Answer every queued task with ``on_task(task)`` until the session ends."""
    for _ in range(limit):
        if w.store.session("s1")["state"] != "running":
            return
        w.clock.now += 1000  # past any retry backoff
        w.orch.schedule()
        await w.settle()
        tasks = queued(w)
        assert tasks, "the session is running with nothing queued"
        for t in tasks:
            await on_task(t)
    raise AssertionError("the session did not end")


def world_config(**kw):
    return {"isolate_worktrees": True, "retry_attempts": 0, **kw}


def test_a_subtask_that_always_fails_is_replanned_within_the_limits_then_reported(tmp_path):
    make_repo(tmp_path)
    counts: dict[str, int] = {}

    async def go(w: World):
        w.config.gates["tests"].command = "false"  # every gate fails
        await start(w)

        async def on_task(t):
            counts[t.kind] = counts.get(t.kind, 0) + 1
            if t.kind in ("plan", "replan"):
                await finish(w, t, text=plan_text("a", "b"))
            elif t.kind == "gate":
                await finish(w, t, Outcome.FAILED, exit_code=1, stdout="1 failed")
            else:
                await finish(w, t)

        await run_until_done(w, on_task)
        row = w.store.session("s1")
        assert row["state"] == "failed"  # nothing could be accepted
        # 1 re-plan per subtask line (a, b) and no re-plan of the replacements
        assert counts["replan"] == 2
        replans = [e for e in w.store.history("s1") if e["kind"] == "replan_limit"]
        assert len(replans) == 4 and "orchestrator.max_replans = 1" in replans[0]["detail"]
        assert "not done:" in row["detail"] and "gate tests failed" in row["detail"]
    scenario(tmp_path, go, **world_config(max_replans=1, max_replans_per_session=5))


def test_the_session_wide_replan_limit_ends_the_session_partial(tmp_path):
    make_repo(tmp_path)

    async def go(w: World):
        w.config.gates["tests"].command = "false"
        await start(w)
        replans = 0

        async def on_task(t):
            nonlocal replans
            if t.kind == "plan":
                await finish(w, t, text=plan_text("good", "bad1", "bad2"))
            elif t.kind == "replan":
                replans += 1
                await finish(w, t, text=plan_text("again"))
            elif t.kind == "gate":
                parent = w.task(t.parent)
                ok = parent.key == "good"
                await finish(w, t, Outcome.SUCCEEDED if ok else Outcome.FAILED,
                             exit_code=0 if ok else 1)
            elif t.kind == "review":
                await finish(w, t, text='```json\n{"verdict": "approve", "reasons": []}\n```')
            else:
                await finish(w, t)

        await run_until_done(w, on_task)
        row = w.store.session("s1")
        assert replans == 1  # the session's one re-plan
        assert row["state"] == "partial", row["detail"]
        assert "1/" in row["detail"] and "max_replans_per_session = 1" in row["detail"]
    scenario(tmp_path, go, **world_config(max_replans=3, max_replans_per_session=1))


def test_an_unreadable_review_is_asked_again_then_escalated_never_accepted(tmp_path):
    make_repo(tmp_path)
    reviewers: list[str] = []

    async def go(w: World):
        w.config.gates["tests"].command = ""  # no gates: straight to review
        await start(w)

        async def on_task(t):
            if t.kind == "plan":
                await finish(w, t, text=plan_text("a"))
            elif t.kind == "review":
                reviewers.append(t.role)
                if len(reviewers) == 2:
                    assert "could not be used" in t.prompt
                await finish(w, t, text="looks fine to me")  # never a verdict
            else:
                await finish(w, t)

        await run_until_done(w, on_task)
        row = w.store.session("s1")
        assert reviewers == ["manager", "manager", "architect", "architect"]
        assert row["state"] == "failed", row["detail"]
        assert "never reviewed" in row["detail"]
        kinds = [e["kind"] for e in w.store.history("s1")]
        assert "accepted" not in kinds and kinds.count("review_escalated") == 1
    scenario(tmp_path, go, **world_config())


def test_a_failed_review_goes_to_the_next_tier_whose_approval_accepts_the_work(tmp_path):
    make_repo(tmp_path)
    reviewers: list[str] = []

    async def go(w: World):
        w.config.gates["tests"].command = ""
        await start(w)

        async def on_task(t):
            if t.kind == "plan":
                await finish(w, t, text=plan_text("a"))
            elif t.kind == "review":
                reviewers.append(t.role)
                if t.role == "manager":
                    await finish(w, t, Outcome.FAILED, error="API error")
                else:
                    await finish(w, t, text='{"verdict": "approve", "reasons": ["ok"]}')
            else:
                await finish(w, t)

        await run_until_done(w, on_task)
        assert reviewers == ["manager", "architect"]
        assert w.store.session("s1")["state"] == "succeeded"
    scenario(tmp_path, go, **world_config())
