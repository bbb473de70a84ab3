"""Notifications: what the event stream makes worth telling (each reason once per
session), and delivery with retries, a delivery log and counts, through real processes
(a command) and a real local HTTP receiver for webhooks (tests/integration)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from prometheus_client import CollectorRegistry

from libs.config import NotificationsConfig
from protocols import Message, make_header
from protocols.base import Body
from protocols.events import SessionEvent, TaskEvent
from protocols.task import TaskProgress
from services.reporter.attention import Attention
from services.reporter.notify import Notification, Notifier


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watch():
    told: list[Notification] = []
    clock = Clock()
    return Attention(told.append, stalled_after=600, clock=clock), told, clock


def feed(attention: Attention, topic: str, body: Body) -> None:
    attention.on_event(topic, Message(make_header(body.TYPE, "orchestrator", "*"), body))


def task_event(topic: str, sid: str = "s1", detail: str = "") -> TaskEvent:
    return TaskEvent(session_id=sid, task_id="t1", attempt_id="a1",
                     state=topic.split(".")[1], detail=detail)


def test_an_ended_session_is_told_once_with_its_state_and_detail(watch):
    attention, told, _ = watch
    feed(attention, "session.running", SessionEvent(session_id="s1", state="running"))
    feed(attention, "session.failed", SessionEvent(session_id="s1", state="failed",
                                                   detail="gate tests failed"))
    feed(attention, "session.failed", SessionEvent(session_id="s1", state="failed"))
    assert [(n.event, n.session_id) for n in told] == [("failed", "s1")]
    assert "gate tests failed" in told[0].summary


def test_budget_and_unassignable_work_need_attention_once_each(watch):
    attention, told, _ = watch
    for _ in range(2):
        feed(attention, "session.attention", SessionEvent(
            session_id="s1", state="running", detail="budget of $1.00 reached"))
        feed(attention, "task.waiting", task_event("task.waiting",
                                                   detail="no agent with role spare"))
    assert [(n.event, n.reason) for n in told] == [("needs_attention", "budget"),
                                                   ("needs_attention", "unassignable")]
    assert "no agent with role spare" in told[1].summary
    # nothing is told about a session after its end
    feed(attention, "session.partial", SessionEvent(session_id="s1", state="partial"))
    feed(attention, "task.waiting", task_event("task.waiting", detail="again"))
    assert [n.event for n in told][2:] == ["partial"]


def test_a_session_where_nothing_happens_is_stalled_and_told_again_after_activity(watch):
    attention, told, clock = watch
    feed(attention, "task.running", task_event("task.running"))
    clock.now += 599
    attention.check()
    assert told == []
    clock.now += 2
    attention.check()
    attention.check()
    assert [(n.reason, n.session_id) for n in told] == [("stalled", "s1")]
    # progress of a long task is activity
    feed(attention, "task.progress", TaskProgress(session_id="s1", task_id="t1",
                                                  attempt_id="a1", agent_id="x", kind="text"))
    clock.now += 300
    attention.check()
    assert len(told) == 1
    clock.now += 301
    attention.check()
    assert [n.reason for n in told] == ["stalled", "stalled"]


def test_running_sessions_listed_by_the_orchestrator_are_watched(watch):
    """A reporter that started after a session's last event still notices its stall."""
    attention, told, clock = watch
    attention.seed(["s7"])
    clock.now += 700
    attention.check()
    assert [(n.reason, n.session_id) for n in told] == [("stalled", "s7")]


def run_notifier(tmp_path, config: NotificationsConfig, *notes: Notification):
    registry = CollectorRegistry()
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    async def go():
        notifier = Notifier(config, tmp_path / "notifications.jsonl", registry, sleep=no_wait)
        for n in notes:
            notifier.notify(n)
        await notifier.close(timeout=30)

    asyncio.run(go())
    log = [json.loads(line) for line in (tmp_path / "notifications.jsonl").read_text()
           .splitlines()] if (tmp_path / "notifications.jsonl").exists() else []
    return registry, log, waits


def test_a_command_gets_the_notification_as_json_on_stdin(tmp_path):
    out = tmp_path / "got.jsonl"
    script = ("import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' ' + "
              "sys.stdin.read() + '\\n')")
    config = NotificationsConfig(command=[sys.executable, "-c", script, str(out), "{event}"])
    registry, log, _ = run_notifier(
        tmp_path, config, Notification("succeeded", "s1", "session s1 succeeded"),
        Notification("cancelled", "s2", "not wanted: cancelled is not in the default events"))
    event, body = out.read_text().strip().split(" ", 1)
    assert event == "succeeded"
    assert json.loads(body)["session_id"] == "s1" and json.loads(body)["source"] == "ccaa"
    assert [(r["session"], r["ok"], r["attempt"]) for r in log] == [("s1", True, 1)]
    assert registry.get_sample_value("ccaa_notifications_total",
                                     {"channel": "command", "result": "delivered"}) == 1


def test_a_failing_command_is_retried_with_backoff_then_given_up_and_logged(tmp_path):
    config = NotificationsConfig(command=[sys.executable, "-c",
                                          "import sys; print('no route', file=sys.stderr); "
                                          "sys.exit(3)"], retries=2, retry_backoff=0.5)
    registry, log, waits = run_notifier(tmp_path, config,
                                        Notification("failed", "s1", "session s1 failed"))
    assert waits == [0.5, 1.0]
    assert [(r["attempt"], r["ok"]) for r in log] == [(1, False), (2, False), (3, False)]
    assert log[-1]["error"] == "exit code 3: no route"
    assert registry.get_sample_value("ccaa_notifications_total",
                                     {"channel": "command", "result": "failed"}) == 1
    assert registry.get_sample_value("ccaa_notification_attempts_total",
                                     {"channel": "command", "ok": "false"}) == 3


def test_a_missing_command_is_a_clear_delivery_error(tmp_path):
    config = NotificationsConfig(command=["/nonexistent/notify"], retries=0)
    _, log, _ = run_notifier(tmp_path, config, Notification("failed", "s1", "x"))
    assert log[0]["ok"] is False and "cannot start '/nonexistent/notify'" in log[0]["error"]


def test_slack_body_is_one_text_line_with_a_link():
    n = Notification("partial", "s1", "session s1 partial: 2 of 3 subtasks",
                     dashboard_url="http://h:8780/")
    assert n.slack() == {"text": ":warning: *ccaa* session s1 partial: 2 of 3 subtasks "
                                 "(<http://h:8780/|dashboard>)"}
