"""The `ccaa` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from pydantic import ValidationError

from libs import security
from libs.client import BusClient
from libs.config import ConfigError, SystemConfig, flag_overrides, load_config
from libs.log import setup_logging
from libs.peer import HubUnreachable, RegistrationRefused, RequestFailed, RequestTimeout
from libs.sqlite import DatabaseError
from services.cli import interrupt
from services.cli import exits, logs, prune, settings, stack_cmds
from services.cli.exits import WaitTimeout
from services.cli.args import config_args, duration, json_flag, json_out, load
from services.cli.credentials import SUBMIT_AUTH_HELP, submit_check
from services.cli.state import since as state_since
from protocols.command import (
    CommandCancel,
    CommandStatus,
    CommandSubmit,
    CommandType,
    SessionList,
)
from protocols.peer import PeerKind, RegistryList

EPILOG = """Typical use:
  ccaa demo                                the whole system, offline, on a sample repository
  ccaa up                                  start the services (supervisord) and agents
  ccaa status                              services and agents with role, state, load
  ccaa submit IMPLEMENT_FEATURE "add a --json flag" --repo . --wait
                                           plan, implement, gate, review, merge; follow it
  ccaa batch tasks.txt --type RUN --wait   many commands at once, one per line
  ccaa watch SESSION                       follow a running session (again) to its end
  ccaa show SESSION                        the task DAG with states, gates and cost
  ccaa logs -f TASK                        a task's attempts, then its live output
  ccaa logs -f --service orchestrator      a service's log on this host (--agent NAME)
  ccaa node --hub tcp://HOST:5555          this host's agent pools, as a node of that hub
  ccaa agent --hub tcp://HOST:5555         attach one more agent from any host
  ccaa audit --since 1d                    who submitted, cancelled, registered, was refused
  ccaa backup FILE / ccaa restore FILE     copy the state database live / put one back
  ccaa config show                         the effective configuration (secrets hidden)
  ccaa deploy DIR                          Dockerfile, compose, systemd units, Prometheus
  ccaa prune --repo . --older-than 7d      delete the branches old sessions left
  ccaa down                                stop everything
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccaa", description="Claude Code Auto Action: many Claude Code agents as one team.",
        epilog=EPILOG + "\n" + exits.help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    stack_cmds.add_parsers(sub)
    settings.add_parser(sub)
    prune.add_parser(sub)

    p = sub.add_parser("submit", help="submit a command on a repository")
    config_args(p)
    p.add_argument("words", nargs="+", metavar="[TYPE] TEXT",
                   help=f"optional command type ({', '.join(t.value for t in CommandType)}) "
                        "then the command text")
    p.add_argument("--repo", default=".", help="repository directory (default: .)")
    p.add_argument("--role", default="worker", help="role that runs the task (default: worker)")
    p.add_argument("--priority", type=int, default=0,
                   help="-100..100; higher runs first (waiting work gains priority over time)")
    p.add_argument("--task-timeout", type=float, help="seconds one attempt may run")
    p.add_argument("--budget", type=float, help="stop assigning tasks once the session has "
                   "cost this many USD")
    p.add_argument("--max-parallel", type=int, help="tasks of this session running at once")
    p.add_argument("--deadline", type=duration, metavar="DURATION",
                   help="the session may take this long (90, 90s, 30m, 2h); then what is left "
                        "is cancelled and it ends partial (or failed if nothing was done)")
    p.add_argument("--gate", action="append", dest="gates", metavar="NAME",
                   help="quality gate to run (repeatable; replaces the workflow's: tests, "
                        "coverage, lint, security, benchmark, or one from .ccaa.toml)")
    p.add_argument("--skip-auth-check", action="store_true", help=SUBMIT_AUTH_HELP)
    p.add_argument("--wait", action="store_true", help="follow the session until it ends "
                   "(each task's start, tool calls and end; -v for everything)")
    p.add_argument("--wait-timeout", type=float, help="give up waiting after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="with --wait: every task state and all the agents' live progress")
    p.add_argument("--json", action="store_true", help="print the accepted session (with "
                   "--wait: its final status) as JSON")

    from services.cli import batch
    batch.add_parser(sub, config_args)

    p = sub.add_parser("watch", help="follow a session to its end (re-attach after Ctrl-C, "
                       "or one submitted elsewhere); exit 0 if it succeeded")
    config_args(p)
    p.add_argument("session_id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every task state and all the agents' live progress")
    p.add_argument("--json", action="store_true", help="print the final status as JSON")

    p = sub.add_parser("show", help="a session: its task DAG with states, gates, cost")
    config_args(p)
    p.add_argument("session_id")
    p.add_argument("--history", action="store_true", help="also print every state change")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sessions", help="recent sessions")
    config_args(p)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")

    logs.add_parser(sub)

    p = sub.add_parser("audit", help="who did what: submits, cancels, registrations, refusals, "
                       "key changes, prunes, backups")
    config_args(p)
    p.add_argument("--since", type=state_since, help="from this long ago (30m, 2h, 7d) or this "
                   "time (2026-11-25T10:00)")
    p.add_argument("--session", help="only records of this session")
    p.add_argument("--action", help="only this action (submit, cancel, register, refused, ...)")
    p.add_argument("--limit", type=int, default=200, help="newest N records (default 200)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("backup", help="copy the state database while it runs (SQLite online "
                       "backup), checked after copying")
    config_args(p)
    p.add_argument("file", help="the copy to write (a directory: a dated file in it)")
    json_flag(p)

    p = sub.add_parser("restore", help="replace the state database with a backup (the stack "
                       "must be down; the replaced database is kept beside it)")
    config_args(p)
    p.add_argument("file", help="a backup made by `ccaa backup` or an automatic one "
                   "(DATA_DIR/backups)")
    json_flag(p)

    p = sub.add_parser("cancel", help="cancel a session (running tasks are stopped)")
    config_args(p)
    p.add_argument("session_id")
    p.add_argument("--reason", default="cancelled by user")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="run the whole system on a sample repository (offline by "
                       "default, with a scripted model server and real Claude Code processes)")
    p.add_argument("--dir", default="ccaa-demo", help="working directory (default: ./ccaa-demo)")
    p.add_argument("--live", action="store_true",
                   help="use the real Anthropic API (needs ANTHROPIC_API_KEY)")
    p.add_argument("--workers", type=int, default=2, help="Claude Code worker agents")
    p.add_argument("--keep", action="store_true", help="leave the services running")
    p.add_argument("--task-timeout", type=float, default=300)

    p = sub.add_parser(
        "keys", help="CurveZMQ keys: `init`, `add NAME [--role R] [--service S]`, `list`",
        description="`init` makes the hub's keypair and one key per service, `agents` (agents "
        "of any role) and `client` (the CLI). `add NAME` makes another key: with --role, for "
        "agents of those roles (on --host only, if given); with --service, for that service; "
        "otherwise a client key. The hub lets each key register only as what it was made "
        "for; send the hub SIGHUP after adding keys.")
    config_args(p)
    p.add_argument("action", choices=["init", "add", "list"])
    p.add_argument("name", nargs="?", default="client", help="key name")
    p.add_argument("--role", action="append", default=[],
                   help="agents of this role may use the key (repeatable; 'any' for all)")
    p.add_argument("--host", action="append", default=[],
                   help="only agents on this host (repeatable)")
    p.add_argument("--service", help="the one service that may use the key")
    json_flag(p, "the keys (list) or the files written")

    p = sub.add_parser("agent", help="run one agent attached to a hub (any host)",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    sub.add_parser("claude", help="the Claude Code CLI the agents run: `ccaa claude login`, "
                   "`ccaa claude status`, or any of its own commands", add_help=False)

    p = sub.add_parser("model-server", help="the scripted Anthropic-compatible model server",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


_load = load


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.cli.demo import demo

    return demo(Path(args.dir), args.live, args.workers, args.keep, args.task_timeout)


def _split_type(words: list[str]) -> tuple[CommandType | None, str]:
    if len(words) > 1 and words[0].upper() in CommandType._value2member_map_:
        return CommandType(words[0].upper()), " ".join(words[1:])
    return None, " ".join(words)


def cmd_submit(args: argparse.Namespace) -> int:
    from services.cli import views
    from services.cli.session_view import SessionFollower

    config = _load(args)
    type_, text = _split_type(args.words)
    body = CommandSubmit(text=text, repo=os.path.abspath(args.repo), type=type_, role=args.role,
                         priority=args.priority, timeout_s=args.task_timeout,
                         budget_usd=args.budget, max_parallel=args.max_parallel,
                         gates=args.gates, deadline_s=args.deadline)

    async def go() -> int:
        quiet = (lambda line: None) if args.json else print
        follower = SessionFollower("", out=quiet, verbose=args.verbose)
        sub = follower.subscribe(config) if args.wait else None
        async with BusClient(config.communication) as bus:
            if not args.skip_auth_check:
                agents = await bus.request("hub", RegistryList(kind=PeerKind.AGENT))
                refusal, warning = submit_check(agents.body.peers,  # type: ignore[attr-defined]
                                                type_, args.role)
                if refusal:
                    if sub is not None:
                        await sub.close()
                    print(f"ccaa submit: {refusal}", file=sys.stderr)
                    return exits.REFUSED
                if warning:
                    print(f"ccaa submit: warning: {warning}", file=sys.stderr)
            try:
                reply = await bus.request("commands", body)
            except BaseException:
                if sub is not None:
                    await sub.close()
                raise
            acc = reply.body
            if sub is None and json_out(args, acc):
                return exits.OK
            quiet(f"session {acc.session_id} accepted as {acc.type.value} "  # type: ignore[attr-defined]
                  f"({acc.classification})")  # type: ignore[attr-defined]
            if sub is None:
                return exits.OK
            sid = follower.session_id = acc.session_id  # type: ignore[attr-defined]
            interrupt.going_on(f"session {sid} goes on: follow it again with `ccaa watch "
                               f"{sid}`, stop it with `ccaa cancel {sid}`")
            final = await follower.follow(bus, sub, args.wait_timeout)
            if not json_out(args, final):
                print()
                print(views.show(final))
            return exits.OK if final.session.state.value == "succeeded" else exits.NOT_SUCCEEDED

    return asyncio.run(go())


def cmd_batch(args: argparse.Namespace) -> int:
    from services.cli import batch

    return batch.cmd_batch(args, _load(args))


def cmd_watch(args: argparse.Namespace) -> int:
    from services.cli.session_view import cmd_watch as watch

    return watch(args, _load(args))


async def _ask(config: SystemConfig, dst: str, body):
    async with BusClient(config.communication) as bus:
        return (await bus.request(dst, body)).body


def cmd_show(args: argparse.Namespace) -> int:
    from services.cli import views

    st = asyncio.run(_ask(_load(args), "orchestrator", CommandStatus(session_id=args.session_id)))
    if json_out(args, st):
        return 0
    print(views.show(st))
    if args.history:
        print("history")
        for h in st.history:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(h['ts']))} {h['kind']:<14} "
                  f"{h['task_id'] or '-':<16} {h['from_state'] or '-':>10} -> "
                  f"{h['to_state'] or '-':<10} {h['detail']}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    from services.cli import views

    reply = asyncio.run(_ask(_load(args), "orchestrator", SessionList(limit=args.limit)))
    if not json_out(args, reply):
        print(views.sessions_table(reply.sessions))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from services.cli.keys import keys

    return keys(args, load_config(args.config, overrides=flag_overrides(args.set)))


def cmd_audit(args: argparse.Namespace) -> int:
    from services.cli import state

    return state.audit(_load(args), args)


def cmd_backup(args: argparse.Namespace) -> int:
    from services.cli import state

    return state.backup(_load(args), args.file, args)


def cmd_restore(args: argparse.Namespace) -> int:
    from services.cli import stack, state

    config = _load(args)
    return state.restore(config, args.file, running=stack.supervisord_pid(config) is not None,
                         args=args)


def cmd_cancel(args: argparse.Namespace) -> int:
    st = asyncio.run(_ask(_load(args), "orchestrator",
                          CommandCancel(session_id=args.session_id, reason=args.reason)))
    if not json_out(args, st):
        print(f"session {st.session.session_id} {st.session.state.value}: {st.session.detail}")
    return exits.OK if st.session.state.value == "cancelled" else exits.NOT_SUCCEEDED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        from services.agent.__main__ import main as agent_main
        return agent_main(_agent_argv(argv[1:]))
    if argv[:1] == ["claude"]:
        return claude_cli(argv[1:])
    if argv[:1] == ["model-server"]:
        from services.model_server.__main__ import main as model_main
        return model_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging("error")
    handlers = {"demo": cmd_demo, **stack_cmds.HANDLERS, "config": settings.cmd_config,
                "prune": lambda a: prune.main_for(a, _load(a)),
                "submit": cmd_submit, "batch": cmd_batch, "watch": cmd_watch, "show": cmd_show, "sessions": cmd_sessions,
                "logs": lambda a: logs.cmd_logs(a, _load(a)), "cancel": cmd_cancel, "keys": cmd_keys, "audit": cmd_audit,
                "backup": cmd_backup, "restore": cmd_restore}
    try:
        return interrupt.run(handlers[args.cmd], args)
    except ConfigError as exc:
        print(f"ccaa: {exc}", file=sys.stderr)
        return exits.USAGE
    except WaitTimeout as exc:
        print(f"ccaa: {exc}; it goes on", file=sys.stderr)
        return exits.WAIT_TIMEOUT
    except (RequestTimeout, HubUnreachable, TimeoutError) as exc:
        print(f"ccaa: {exc} (is it up? try `ccaa up`)", file=sys.stderr)
        return exits.UNREACHABLE
    except RequestFailed as exc:
        print(f"ccaa: refused: {exc.reason} [{exc.code}]", file=sys.stderr)
        return exits.for_error(str(getattr(exc.code, "value", exc.code)))
    except RegistrationRefused as exc:
        print(f"ccaa: {exc}", file=sys.stderr)
        return exits.REFUSED
    except (security.KeyError_, DatabaseError) as exc:
        print(f"ccaa: {exc}", file=sys.stderr)
        return exits.USAGE
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        print(f"ccaa: invalid request: {problems}", file=sys.stderr)
        return exits.USAGE


def claude_cli(rest: list[str]) -> int:
    """`ccaa claude ARGS`: the Claude Code CLI the agents run (on PATH, or the one bundled
    with claude-agent-sdk), e.g. `ccaa claude login` (its `auth login`), `ccaa claude
    status` (`auth status --text`)."""
    from services.agent.executors.claude import resolve_cli
    from services.agent.executors.factory import CLAUDE_PATH_ENV

    shortcuts = {"login": ["auth", "login"], "status": ["auth", "status", "--text"],
                 "logout": ["auth", "logout"]}
    args = shortcuts.get(rest[0], rest[:1]) + rest[1:] if rest else ["--help"]
    try:
        cli = resolve_cli(os.environ.get(CLAUDE_PATH_ENV) or None)
    except FileNotFoundError as exc:
        print(f"ccaa claude: {exc}", file=sys.stderr)
        return exits.USAGE
    sys.stdout.flush()
    os.execv(cli, [cli, *args])
    return exits.USAGE  # not reached


def _agent_argv(rest: list[str]) -> list[str]:
    """`ccaa agent --hub tcp://H:5555` also finds the event ports (5556, 5557) by default."""
    from libs.runner import derive_endpoint

    if "--hub" in rest and "--pub" not in rest and "--sub" not in rest:
        hub = rest[rest.index("--hub") + 1] if rest.index("--hub") + 1 < len(rest) else ""
        if hub.startswith("tcp://"):
            rest = rest + ["--pub", derive_endpoint(hub, 1), "--sub", derive_endpoint(hub, 2)]
    return rest


if __name__ == "__main__":
    sys.exit(main())
