"""What a task's applied result says: the agent's answer and the commit it made."""

from __future__ import annotations

from services.orchestrator.store import TaskRow


def answer_text(task: TaskRow) -> str:
    """The agent's final answer: Claude's result text, else the command's stdout."""
    data = task.result.get("data") or {}
    return str(data.get("result") or task.result.get("stdout") or "")


def commit_of(task: TaskRow) -> str:
    return str((task.result.get("data") or {}).get("commit") or "")
