"""The architect's plan: a DAG of subtasks, parsed from the architect's final text and
validated (unknown dependencies, duplicate ids, cycles and empty plans are rejected with a
message the architect can act on when it is asked again)."""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Subtask(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    role: str = "worker"
    capabilities: list[str] = []
    depends_on: list[str] = []
    acceptance_criteria: list[str] = []
    files: list[str] = []


class Plan(BaseModel):
    model_config = ConfigDict(extra="ignore")

    summary: str = ""
    subtasks: list[Subtask]


class PlanError(ValueError):
    """The plan cannot be used; the message says why, for the architect to fix."""


_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def extract_json(text: str) -> str:
    """The plan JSON from an answer: a ```json fenced block, else the outermost {...}."""
    fenced = _FENCE.findall(text)
    if fenced:
        return fenced[-1]
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end <= start:
        raise PlanError("no JSON object found in the answer")
    return text[start:end + 1]


def parse_plan(text: str, roles: set[str] | None = None) -> Plan:
    try:
        raw = json.loads(extract_json(text))
    except json.JSONDecodeError as exc:
        raise PlanError(f"the plan is not valid JSON: {exc}") from None
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise PlanError(f"the plan does not match the schema: {problems}") from None
    validate(plan, roles)
    return plan


def validate(plan: Plan, roles: set[str] | None = None) -> list[str]:
    """Check the DAG; returns the subtask ids in a dependency order."""
    if not plan.subtasks:
        raise PlanError("the plan has no subtasks")
    ids = [s.id for s in plan.subtasks]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PlanError(f"duplicate subtask ids: {', '.join(dupes)}")
    known = set(ids)
    for s in plan.subtasks:
        unknown = [d for d in s.depends_on if d not in known]
        if unknown:
            raise PlanError(f"subtask {s.id} depends on unknown subtasks: {', '.join(unknown)}")
        if s.id in s.depends_on:
            raise PlanError(f"subtask {s.id} depends on itself")
        if roles is not None and s.role not in roles:
            raise PlanError(f"subtask {s.id} has unknown role {s.role!r}; "
                            f"use one of {', '.join(sorted(roles))}")
    return topological_order(plan)


def topological_order(plan: Plan) -> list[str]:
    deps = {s.id: set(s.depends_on) for s in plan.subtasks}
    order: list[str] = []
    ready = sorted(i for i, d in deps.items() if not d)
    remaining = {i: set(d) for i, d in deps.items() if d}
    while ready:
        current = ready.pop(0)
        order.append(current)
        for other, d in list(remaining.items()):
            d.discard(current)
            if not d:
                del remaining[other]
                ready.append(other)
        ready.sort()
    if remaining:
        cycle = find_cycle({i: deps[i] for i in remaining})
        raise PlanError(f"the dependencies form a cycle: {' -> '.join(cycle)}")
    return order


def find_cycle(deps: dict[str, set[str]]) -> list[str]:
    """One cycle in a dependency graph known to contain one."""
    start = sorted(deps)[0]
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = sorted(d for d in deps[node] if d in deps)[0]
    return path[seen[node]:] + [node]
