"""Generate the message reference in PROTOCOL.md from the models:
``python -m protocols.doc`` prints it; ``--write`` updates PROTOCOL.md in place."""

from __future__ import annotations

import sys
from pathlib import Path

from protocols.base import Body
from protocols.command import AttemptInfo, SessionInfo, TaskInfo
from protocols.peer import PeerInfo
from protocols.registry import MESSAGE_TYPES
from protocols.task import AgentRecord, TaskSpec

#: records that travel inside messages
NESTED: dict[str, type[Body]] = {"TaskSpec": TaskSpec, "PeerInfo": PeerInfo,
                                 "SessionInfo": SessionInfo, "TaskInfo": TaskInfo,
                                 "AttemptInfo": AttemptInfo,
                                 "AgentRecord": AgentRecord}

BEGIN = "<!-- BEGIN GENERATED: python -m protocols.doc --write -->"
END = "<!-- END GENERATED -->"

#: who sends each type to whom
ROUTES: dict[str, str] = {
    "peer.register": "any peer -> hub",
    "peer.registered": "hub -> peer (reply)",
    "peer.heartbeat": "peer -> hub, hub -> peer (reply)",
    "peer.disconnect": "peer -> hub",
    "error": "anyone -> the sender of a bad or failed request (reply)",
    "ack": "orchestrator -> agent (reply to repo.release and repo.push_chunk)",
    "bus.bundle": "any peer -> any peer: the messages it sends that peer in one turn",
    "registry.list": "any peer -> hub",
    "registry.list_reply": "hub -> peer (reply)",
    "node.config": "controller (ccaa node) -> hub",
    "node.config_reply": "hub -> controller (reply)",
    "repo.fetch": "agent -> orchestrator (a host without the session's commit)",
    "repo.offer": "orchestrator -> agent (reply to repo.fetch / repo.push)",
    "repo.chunk_get": "agent -> orchestrator (at most code_transfer.credit in flight)",
    "repo.chunk": "orchestrator -> agent (reply)",
    "repo.release": "agent -> orchestrator (the bundle is no longer needed)",
    "repo.push": "agent -> orchestrator (its task branch, before its result)",
    "repo.push_chunk": "agent -> orchestrator (acked; at most code_transfer.credit in flight)",
    "repo.push_done": "agent -> orchestrator",
    "repo.pushed": "orchestrator -> agent (reply: the branch is in the user's repository)",
    "command.submit": "client -> commands",
    "command.accepted": "commands -> client (reply)",
    "command.submit_batch": "client -> commands",
    "command.accepted_batch": "commands -> client (reply)",
    "command.status": "client -> orchestrator",
    "command.cancel": "client -> orchestrator",
    "command.status_reply": "orchestrator -> client (reply to status and cancel)",
    "session.create": "commands -> orchestrator",
    "session.created": "orchestrator -> commands (reply)",
    "session.create_batch": "commands -> orchestrator",
    "session.created_batch": "orchestrator -> commands (reply)",
    "session.list": "client -> orchestrator",
    "session.list_reply": "orchestrator -> client (reply)",
    "session.counts": "client, reporter -> orchestrator",
    "session.counts_reply": "orchestrator -> client (reply)",
    "task.logs": "client -> orchestrator",
    "task.logs_reply": "orchestrator -> client (reply): the task and every attempt's result",
    "task.enqueue": "orchestrator -> distributor",
    "claude.transcript_get": "agent -> agent (a later attempt's, to the previous attempt's)",
    "claude.transcript": "agent -> agent (reply: the Claude Code session, zlib-compressed)",
    "queue.stats": "controller -> distributor (auto-scaling)",
    "queue.stats_reply": "distributor -> controller (reply)",
    "task.assign": "distributor -> agent",
    "task.dispatched": "distributor -> task owner (orchestrator); honoured, no longer sent",
    "task.accepted": "agent -> distributor (reply to task.assign) and -> owner, once the "
                     "attempt has run for 50 ms (a quicker one is told by its release and "
                     "its result)",
    "task.progress": "agent -> event topic task.progress",
    "task.result": "agent -> owner, resent until acknowledged",
    "task.result_ack": "owner -> agent (reply)",
    "task.cancel": "owner -> agent",
    "task.released": "orchestrator -> distributor; agent -> distributor (its slot is free; "
                     "the reply to task.assign when the attempt ended within 50 ms)",
    "task.waiting": "distributor -> task owner: no agent could take it (or one can again)",
    "agent.stats": "distributor -> orchestrator (at start: the agents' attempt record)",
    "agent.stats_reply": "orchestrator -> distributor (reply)",
    "event.task": "orchestrator -> event topic task.<state>",
    "event.session": "orchestrator -> event topic session.<state>; session.attention "
                     "(state running) when a running session needs someone (its budget is "
                     "spent)",
    "event.peer": "hub -> agent.<state> / service.<state> / client.<state> (registered and "
                  "refused carry who: key, host, pid, user) / handshake.refused; "
                  "controller -> pool.<event>",
    "event.keys": "hub -> event topic keys.changed (its allow-list re-read on SIGHUP)",
    "audit.query": "client -> orchestrator",
    "audit.reply": "orchestrator -> client (reply): audit records, oldest first",
}


def _type_name(annotation: object) -> str:
    if getattr(annotation, "__args__", None):
        text = str(annotation)  # list[str], X | None, dict[str, Any] ...
    else:
        text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("|", "\\|").replace("typing.", "").replace("protocols.", "").replace("peer.", "").replace("task.", "").replace("command.", "")


def _fields(model: type[Body]) -> list[str]:
    lines = ["| field | type | default |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = repr(getattr(value, "value", value))
        lines.append(f"| `{name}` | `{_type_name(field.annotation)}` | `{default}` |")
    return lines + [""]


def render() -> str:
    lines = [BEGIN, ""]
    for type_, model in MESSAGE_TYPES.items():
        doc = (model.__doc__ or "").strip().splitlines()
        lines += [f"### `{type_}`", "", f"{ROUTES.get(type_, '?')}." +
                  (f" {doc[0]}" if doc else ""), ""]
        lines += _fields(model)
    lines += ["## Records inside messages", ""]
    for name, model in NESTED.items():
        doc = (model.__doc__ or "").strip().splitlines()
        lines += [f"### `{name}`", ""] + ([doc[0], ""] if doc else [])
        lines += _fields(model)
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    generated = render()
    if "--write" not in argv:
        print(generated)
        return 0
    path = Path(__file__).with_name("PROTOCOL.md")
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(head + generated + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
