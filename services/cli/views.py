"""How the CLI prints sessions, task DAGs, gates and logs."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from protocols.command import CommandStatusReply, SessionInfo, TaskInfo, TaskLogsReply
from protocols.peer import CONTROLLER, PeerInfo, PeerKind, RegistryListReply, service_of


def ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def money(x: float | None) -> str:
    return "-" if x is None else f"${x:.4f}"


def state_counts(tasks: list[TaskInfo]) -> str:
    counts = Counter(t.state.value for t in tasks)
    order = ["pending", "ready", "queued", "assigned", "running", "succeeded", "failed",
             "timed_out", "cancelled"]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


def sessions_table(sessions: list[SessionInfo]) -> str:
    lines = [f"{'SESSION':<14} {'TYPE':<20} {'STATE':<10} {'COST':>9} {'AGE':>5}  TEXT"]
    for s in sessions:
        text = s.text.splitlines()[0][:50] if s.text else ""
        lines.append(f"{s.session_id:<14} {s.type.value:<20} {s.state.value:<10} "
                     f"{money(s.cost_usd):>9} {ago(s.created_at):>5}  {text}")
    return "\n".join(lines)


def _task_line(t: TaskInfo, by_id: dict[str, TaskInfo], indent: str = "  ") -> str:
    deps = [by_id[d].key or d for d in t.depends_on if d in by_id]
    dep_text = f" <- {', '.join(deps)}" if deps else ""
    data = t.result.get("data") or {}
    cost = data.get("total_cost_usd")
    extras = []
    if t.agent_id:
        extras.append(t.agent_id)
    if t.attempt > 1:
        extras.append(f"attempt {t.attempt}")
    if isinstance(cost, (int, float)):
        extras.append(money(cost))
    if t.meta.get("accepted"):
        extras.append("accepted")
    if t.meta.get("verdict"):
        extras.append(t.meta["verdict"])
    if t.meta.get("waiting"):
        extras.append(f"waiting: {t.meta['waiting']['reason']}")
    if t.meta.get("not_run"):
        extras.append(f"not run: {t.meta['not_run']}")
    if t.meta.get("degraded"):
        extras.append(f"ran one tier up ({t.meta['degraded']})")
    if t.meta.get("gave_up"):
        extras.append(f"gave up: {t.meta['gave_up']}")
    label = t.key or t.title
    return (f"{indent}{t.kind:<10} {label:<24} {t.state.value:<10} {t.role:<9} "
            f"{t.task_id}{dep_text}  {' · '.join(extras)}")


def show(st: CommandStatusReply) -> str:
    s = st.session
    report: dict[str, Any] = s.report or {}
    lines = [f"session {s.session_id}  {s.type.value}  {s.state.value}",
             f"  {s.detail}" if s.detail else "",
             f"  repo {s.repo}" + (f" at {s.base_commit[:12]}" if s.base_commit else ""),
             f"  text {s.text.splitlines()[0][:100] if s.text else ''}",
             f"  cost {money(s.cost_usd)}" + (f" of budget {money(s.budget_usd)}"
                                              if s.budget_usd else "")]
    if report.get("branch"):
        lines.append(f"  branch {report['branch']} at {str(report.get('head', ''))[:12]}")
    if report.get("wall_time_s"):
        lines.append(f"  wall time {report['wall_time_s']:.1f}s  tokens "
                     + ", ".join(f"{k.replace('_tokens', '')} {v}" for k, v in
                                 (report.get("tokens") or {}).items() if v))
    by_id = {t.task_id: t for t in st.tasks}
    lines.append(f"tasks ({state_counts(st.tasks)}; `ccaa logs TASK` shows a task's attempts)")
    children: dict[str, list[TaskInfo]] = {}
    for t in st.tasks:
        if t.parent:
            children.setdefault(t.parent, []).append(t)
    for t in st.tasks:
        if t.parent and t.parent in by_id:
            continue
        lines.append(_task_line(t, by_id))
        for c in children.get(t.task_id, []):
            lines.append(_task_line(c, by_id, indent="      "))
    if report.get("gates"):
        lines.append("gates")
        lines += [line for g in report["gates"] for line in gate_lines(g)]
    if report.get("reviews"):
        lines.append("reviews")
        for r in report["reviews"]:
            lines.append(f"  {r.get('key', ''):<28} {r.get('verdict') or r.get('state', ''):<18} "
                         f"{r.get('reviewer', '')}")
            lines += [f"      - {reason}"[:200] for reason in r.get("reasons", [])[:10]]
    if report.get("analysis"):
        lines.append("analysis")
        lines += [f"  {line}" for line in str(report["analysis"]).splitlines()]
    agents = report.get("per_agent") or {}
    if agents:
        lines.append("agents")
        for name, f in sorted(agents.items()):
            lines.append(f"  {name:<28} attempts {int(f.get('attempts', 0))}  succeeded "
                         f"{int(f.get('succeeded', 0))}  {f.get('seconds', 0):.1f}s  "
                         f"{money(f.get('cost_usd', 0))}")
    return "\n".join(line for line in lines if line)


def gate_lines(g: dict[str, Any]) -> list[str]:
    """A gate run in `ccaa show`: verdict, time, command; figures base vs branch; the first
    lines of its output when it failed."""
    state = g["state"] if g.get("available", True) else "n/a"
    took = f"{g['seconds']:.1f}s" if g.get("seconds") is not None else ""
    lines = [f"  {str(g.get('gate')):<10} {g.get('key', ''):<28} {state:<10} {took:>7}  "
             f"{g.get('verdict', '')}"[:200]]
    if g.get("command"):
        lines.append(f"      $ {g['command']}"[:200])
    if g.get("base_value") is not None or g.get("base_findings") is not None:
        branch = g.get("value", g.get("findings"))
        base = g.get("base_value", g.get("base_findings"))
        lines.append(f"      base {base}  branch {branch}"
                     + (f"  (base run {g['base_seconds']:.1f}s)" if g.get("base_seconds") else ""))
    for item in g.get("new", [])[:5]:
        lines.append(f"      new: {item}"[:200])
    for out in str(g.get("output_head", "")).splitlines()[:5]:
        lines.append(f"      | {out}"[:200])
    return lines


def logs(reply: TaskLogsReply) -> str:
    t = reply.task
    lines = [f"task {t.task_id} ({t.kind} {t.key or t.title}) {t.state.value}, role {t.role}"]
    for a in reply.attempts:
        r = a.result
        data = r.get("data") or {}
        took = f"{a.ended_at - a.started_at:.1f}s" if a.ended_at else "running"
        lines.append(f"\n--- attempt {a.n} {a.attempt_id} on {a.agent_id or '-'}: {a.state}"
                     f" ({took}){'' if a.applied or not a.ended_at else ' [not applied]'}")
        if r.get("exit_code") is not None:
            lines.append(f"exit code {r['exit_code']}")
        if r.get("error"):
            lines.append(f"error: {r['error']}")
        for key in ("session_id", "num_turns", "total_cost_usd", "branch", "commit"):
            if data.get(key) not in (None, ""):
                lines.append(f"{key}: {data[key]}")
        if data.get("result"):
            lines.append(f"final text:\n{data['result']}")
        if r.get("stdout"):
            lines.append(f"stdout (tail):\n{r['stdout'].rstrip()}")
        if r.get("stderr"):
            lines.append(f"stderr (tail):\n{r['stderr'].rstrip()}")
    return "\n".join(lines)


def _peer_row(p: PeerInfo, indent: str = "") -> str:
    load = f"{p.load}/{p.capacity}" if p.kind == PeerKind.AGENT else "-"
    row = (f"{indent + p.name:<36} {p.kind.value:<8} {p.role or '-':<10} {p.state.value:<8} "
           f"{load:<6} {p.pid}")
    if p.auth and p.auth != "ok":
        row += "  Claude Code cannot authenticate (ccaa claude status)"
    return row


def host_line(host: str, stats: dict[str, float]) -> str:
    if not stats:
        return f"host {host or '?'}: no controller (bare agents)"
    free = stats.get("available_mb", 0) / 1024
    total = stats.get("memory_mb", 0) / 1024
    return (f"host {host}: {stats.get('cores', 0):g} cores, load {stats.get('load1', 0):g}, "
            f"memory {free:.1f} of {total:.1f} GiB free")


def status_table(reply: RegistryListReply, router: str) -> str:
    """Services, then each host (its controller's view of cores, load, memory) with its
    agents under it."""
    lines = [f"{'NAME':<36} {'KIND':<8} {'ROLE':<10} {'STATE':<8} {'LOAD':<6} PID",
             f"{'hub':<36} {'service':<8} {'-':<10} {'serving':<8} {'-':<6} "
             f"{reply.hub_pid}  {router} (id {reply.hub_id})"]
    controllers = {p.host: p for p in reply.peers if service_of(p.name) == CONTROLLER}
    lines += [_peer_row(p) for p in reply.peers
              if p.kind == PeerKind.SERVICE and service_of(p.name) != CONTROLLER]
    hosts: dict[str, list[PeerInfo]] = {}
    for p in reply.peers:
        if p.kind == PeerKind.AGENT:
            hosts.setdefault(p.host, []).append(p)
    for host in sorted(set(hosts) | set(controllers)):
        controller = controllers.get(host)
        lines.append(host_line(host, controller.host_stats if controller else {}))
        if controller is not None:
            lines.append(_peer_row(controller, "  "))
        lines += [_peer_row(p, "  ") for p in sorted(hosts.get(host, []), key=lambda p: p.name)]
    return "\n".join(lines)
