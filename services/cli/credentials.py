"""Claude Code credentials, checked before work is started or handed over: `ccaa up` and
`ccaa node` ask the CLI the agents will run (`claude auth status`); `ccaa submit` reads what
the agents found when they started (PeerInfo.auth) and refuses a session no agent could run."""

from __future__ import annotations

import sys

from protocols.command import CommandType
from protocols.peer import PeerInfo, PeerKind

AUTH_HELP = ("start even if Claude Code cannot authenticate here (by default the roles that "
             "run Claude Code on this host are checked first, with `claude auth status`)")
SUBMIT_AUTH_HELP = ("submit even if no Claude Code agent can authenticate (by default what "
                    "the agents found when they started is checked first)")


def claude_ready(config, what: str) -> bool:
    """Whether the Claude Code agents this host would run can authenticate; if not, say
    exactly what to do. True when no role here runs Claude Code."""
    from services.agent.executors.factory import role_auth

    roles = [name for name, rc in config.agent_hierarchy.items()
             if rc.executor == "claude" and rc.count > 0]
    checked: dict[str | None, object] = {}
    for role in roles:  # roles with the same CLI share one answer
        key = config.agent_hierarchy[role].cli_path or None
        status = checked.get(key) or checked.setdefault(key, role_auth(config, role))
        if not status.ok:  # type: ignore[attr-defined]
            print(f"{what}: the roles {', '.join(roles)} run Claude Code, which cannot "
                  f"authenticate here: {status.detail}\n"  # type: ignore[attr-defined]
                  "(--skip-auth-check starts anyway)", file=sys.stderr)
            return False
    return True


def submit_check(peers: list[PeerInfo], type_: CommandType | None,
                 role: str) -> tuple[str, str]:
    """(refusal, warning) for a submit, "" where there is none. The Claude Code agents that
    matter are those of ``role`` for a RUN command, all of them for work an architect plans.
    None of them able to authenticate refuses; some unable warns."""
    claude = [p for p in peers if p.kind == PeerKind.AGENT and p.auth
              and (type_ != CommandType.RUN or p.role == role)]
    bad = [p for p in claude if p.auth != "ok"]
    if not bad:
        return "", ""
    names = ", ".join(f"{p.name} ({p.role}@{p.host})" for p in bad)
    if len(bad) == len(claude):
        return (f"no Claude Code agent that would run this can authenticate: {names}: "
                f"{bad[0].auth}\n(--skip-auth-check submits anyway)"), ""
    return "", (f"{len(bad)} of {len(claude)} Claude Code agents cannot authenticate and "
                f"will fail what they take: {names}: {bad[0].auth}")
