"""The prompts the orchestrator gives architect, worker, manager and utility agents.

Structured answers (plans, review verdicts) are asked for as one JSON object in a
```json fenced block; the marker lines let scripted model servers match each kind."""

from __future__ import annotations

import json
from typing import Any

PLAN_SCHEMA = {
    "summary": "one paragraph: the approach",
    "subtasks": [{
        "id": "short-id (letters, digits, - _ .)",
        "title": "what this subtask delivers",
        "prompt": "complete instructions for the worker who implements it",
        "role": "worker",
        "capabilities": [],
        "depends_on": ["ids of subtasks that must be finished first"],
        "acceptance_criteria": ["how a reviewer knows it is done"],
        "files": ["files it will create or change"],
    }],
}

VERDICT_SCHEMA = {"verdict": "approve | changes_requested", "reasons": ["..."]}


def plan(request: str, instructions: str, roles: list[str], error: str = "") -> str:
    retry = ("" if not error else
             f"\nYOUR PREVIOUS PLAN WAS REJECTED: {error}\nFix that and answer again.\n")
    return (
        "[ccaa:plan]\n"
        f"You are the architect. {instructions.strip()}\n\n"
        f"Request:\n{request}\n\n"
        "Study the repository in your working directory, then answer with ONE JSON object in a "
        "```json fenced block, shaped like this:\n"
        f"```json\n{json.dumps(PLAN_SCHEMA, indent=2)}\n```\n"
        f"Roles available: {', '.join(roles)}. Dependencies must not form a cycle. "
        "Do not modify any file yourself.\n" + retry
    )


def replan(request: str, failed: dict[str, Any], history: str, roles: list[str]) -> str:
    return (
        "[ccaa:replan]\n"
        "You are the architect. A subtask of the plan below failed even after escalation. "
        "Plan its replacement: one or more smaller subtasks that together deliver what it "
        "was meant to deliver (they may depend on each other, not on other subtasks).\n\n"
        f"Original request:\n{request}\n\nFailed subtask:\n{json.dumps(failed, indent=2)}\n\n"
        f"What happened:\n{history[-6000:]}\n\n"
        "Answer with ONE JSON object in a ```json fenced block, shaped like this:\n"
        f"```json\n{json.dumps(PLAN_SCHEMA, indent=2)}\n```\n"
        f"Roles available: {', '.join(roles)}.\n"
    )


def work(title: str, prompt: str, criteria: list[str], files: list[str],
         feedback: list[str]) -> str:
    parts = [f"[ccaa:work] {title}", "", prompt.strip()]
    if criteria:
        parts += ["", "Acceptance criteria:"] + [f"- {c}" for c in criteria]
    if files:
        parts += ["", "Files involved: " + ", ".join(files)]
    if feedback:
        parts += ["", "FEEDBACK ON YOUR PREVIOUS ATTEMPT (address all of it):"]
        parts += [f"- {f}" for f in feedback]
    parts += ["", "Work in your current directory; your changes are committed for you."]
    return "\n".join(parts)


def review(title: str, prompt: str, criteria: list[str], diff: str, problem: str = "") -> str:
    crit = "\n".join(f"- {c}" for c in criteria) or "- (none given: judge against the task)"
    again = (f"Your previous review could not be used: {problem}. Review again and answer "
             "exactly as asked.\n\n") if problem else ""
    return (
        f"[ccaa:review] {title}\n\n{again}"
        "You are the reviewing manager. A worker did the task below; its change is checked "
        "out in your working directory and its diff follows. Check it against the task and "
        "the acceptance criteria. Do not modify files.\n\n"
        f"Task:\n{prompt}\n\nAcceptance criteria:\n{crit}\n\nDiff:\n{diff}\n\n"
        "Answer with ONE JSON object in a ```json fenced block:\n"
        f"```json\n{json.dumps(VERDICT_SCHEMA)}\n```\n"
    )


def resolve(branch: str, commit: str, files: list[str], output: str) -> str:
    return (
        f"[ccaa:resolve] merge {branch}\n\n"
        "You are the manager. Merging a finished task's branch into this session branch "
        f"conflicted. Run `git merge {commit}` here, resolve every conflict so that both "
        "changes are kept and work together, run the tests if there are any, and finish "
        "the merge commit.\n\n"
        f"Conflicting files: {', '.join(files) or '(see output)'}\n\nGit said:\n{output}\n"
    )


def analysis(request: str, instructions: str) -> str:
    return f"[ccaa:analyze]\n{instructions.strip()}\n\nRequest:\n{request}\n"
