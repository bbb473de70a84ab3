"""`ccaa show` names every task by its id (what `ccaa logs TASK` takes)."""

from __future__ import annotations

from protocols.command import (CommandStatusReply, CommandType, SessionInfo, SessionState,
                               TaskInfo)
from protocols.task import TaskState
from services.cli.views import show


def test_show_lists_each_task_with_its_id_and_dependencies():
    st = CommandStatusReply(
        session=SessionInfo(session_id="s-1", type=CommandType.IMPLEMENT_FEATURE, text="t",
                            repo="/r", state=SessionState.RUNNING, created_at=1.0,
                            updated_at=2.0),
        tasks=[TaskInfo(task_id="task-aaa", title="alpha", role="worker", key="a",
                        kind="work", state=TaskState.SUCCEEDED, attempt=1, attempt_id="x"),
               TaskInfo(task_id="task-ccc", title="gamma", role="worker", key="c",
                        kind="work", state=TaskState.READY, attempt=0, attempt_id="",
                        depends_on=["task-aaa"]),
               TaskInfo(task_id="task-rrr", title="review a", role="manager", key="a:review",
                        kind="review", state=TaskState.RUNNING, attempt=1, attempt_id="y",
                        parent="task-aaa", agent_id="mgr-1")])
    text = show(st)
    lines = {line.split()[1]: line for line in text.splitlines()
             if line.strip().startswith(("work", "review"))}
    assert "task-aaa" in lines["a"] and "task-ccc <- a" in lines["c"]
    assert "task-rrr" in lines["a:review"] and "mgr-1" in lines["a:review"]
    assert "`ccaa logs TASK`" in text
