"""The session summary: tasks, gates, cost, tokens, wall time and per-agent figures."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from services.orchestrator.store import Store


def _tokens(data: dict[str, Any]) -> dict[str, int]:
    usage = data.get("usage") or {}
    return {k: int(usage.get(k) or 0) for k in ("input_tokens", "output_tokens",
                                                 "cache_creation_input_tokens",
                                                 "cache_read_input_tokens")}


def session_report(store: Store, session_id: str) -> dict[str, Any]:
    row = store.session(session_id)
    tasks = store.tasks(session_id)
    attempts = store.conn.execute(
        "SELECT a.* FROM attempts a JOIN tasks t ON a.task_id = t.id WHERE t.session_id=?",
        (session_id,)).fetchall()
    per_agent: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    tokens: dict[str, int] = defaultdict(int)
    for a in attempts:
        if not a["agent_id"]:
            continue
        result = json.loads(a["result"])
        data = result.get("data") or {}
        agent = per_agent[a["agent_id"]]
        agent["attempts"] += 1
        agent["succeeded"] += a["state"] == "succeeded"
        agent["seconds"] += float(result.get("duration_s") or 0)
        agent["cost_usd"] += float(data.get("total_cost_usd") or 0)
        for k, v in _tokens(data).items():
            tokens[k] += v
            agent[k] += v
    gates = [gate_entry(t) for t in tasks if t.kind in ("gate", "final_gate")]
    reviews = [{"key": t.key, "reviewer": t.agent_id, "role": t.role, "state": t.state,
                "verdict": t.meta.get("review_verdict", ""), "reasons": t.meta.get("reasons", [])}
               for t in tasks if t.kind == "review"]
    return {
        "tasks": [{"id": t.id, "key": t.key, "kind": t.kind, "title": t.title, "role": t.role,
                   "state": t.state, "attempts": t.attempt, "agent": t.agent_id,
                   "accepted": bool(t.meta.get("accepted")),
                   "branch": (t.result.get("data") or {}).get("branch", ""),
                   "commit": (t.result.get("data") or {}).get("commit", "")}
                  for t in tasks],
        "gates": gates,
        "reviews": reviews,
        "cost_usd": round(float(row["cost_usd"]) if row else 0.0, 6),
        "tokens": dict(tokens),
        "wall_time_s": round((row["updated_at"] - row["created_at"]) if row else 0.0, 3),
        "per_agent": {k: dict(v) for k, v in per_agent.items()},
    }


#: figures of the gate executor a report shows (protocols.gate.GateFigures)
GATE_FIGURES = ("command", "seconds", "exit_code", "value", "base_value", "base_seconds",
                "base_exit_code", "findings", "base_findings", "new_count", "missing",
                "tests", "improvement", "noise", "samples", "base_samples", "removed_count")


def gate_entry(t: Any) -> dict[str, Any]:
    """One gate run: its verdict, command, duration and figures (base beside branch where
    it compared), and the first lines of its output when it failed."""
    figures = (t.result.get("data") or {}).get("gate") or {}
    entry = {"gate": t.meta.get("gate"), "subject": t.title, "key": t.key, "state": t.state,
             "verdict": t.meta.get("verdict", ""), "kind": t.kind,
             "available": not t.meta.get("not_available")}
    entry.update({k: figures[k] for k in GATE_FIGURES if figures.get(k) not in (None, [], "")})
    if figures.get("new"):
        entry["new"] = figures["new"][:10]
    if figures.get("removed"):
        entry["removed"] = figures["removed"][:10]
    if t.state != "succeeded" and figures.get("output_head"):
        entry["output_head"] = "\n".join(figures["output_head"].splitlines()[:10])
    return entry
