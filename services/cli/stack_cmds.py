"""The commands that start, stop and list a stack or a node: `up`, `node`, `down`, `status`,
and `deploy` (the deployment files that ship with ccaa)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from libs import security
from protocols.peer import PeerKind
from services.cli import exits
from services.cli.args import config_args, emit, json_flag, json_out, load
from services.cli.credentials import AUTH_HELP, claude_ready

FOREGROUND_HELP = ("run supervisord in the foreground (for a container's entry point or a "
                   "systemd unit): no readiness wait, logs stay in the run directory, "
                   "SIGTERM stops everything")

def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the six services under supervisord and wait for them")
    config_args(p)
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for readiness")
    p.add_argument("--foreground", action="store_true", help=FOREGROUND_HELP)
    p.add_argument("--skip-auth-check", action="store_true", help=AUTH_HELP)
    json_flag(p, "the endpoints, services and agents")

    p = sub.add_parser(
        "node", help="start this host's agent pools as a node of a hub on another host",
        description="Start this host's controller under supervisord, connected to the hub "
        "at --hub, and wait until it and its agents registered. Role definitions, gates, "
        "templates and timing come from the hub's configuration; this host's config file "
        "(--config) may set only its agent counts (agent_hierarchy.ROLE.count, cli_path), "
        "resources, auto_scaling, metrics, data_dir and how it connects (keys, token). "
        "The bus token is DATA_DIR/bus.token or communication.token; under CurveZMQ the "
        "keys directory holds hub.key, the controller's and the agents' keypairs. "
        "`ccaa down` with the same config stops just this node.")
    config_args(p)
    p.add_argument("--hub", required=True, metavar="tcp://HOST:PORT",
                   help="the hub's ROUTER endpoint (its event ports come from the hub)")
    p.add_argument("--host-name", help="the name this host registers under (default: "
                   "its hostname); agents are named agent-ROLE-NAME-N")
    p.add_argument("--timeout", type=float, default=120,
                   help="seconds to wait for the controller and its agents (default 120)")
    p.add_argument("--foreground", action="store_true", help=FOREGROUND_HELP)
    p.add_argument("--skip-auth-check", action="store_true", help=AUTH_HELP)
    json_flag(p, "the node's agents by role")

    p = sub.add_parser("down", help="stop supervisord, the services and every agent")
    config_args(p)
    json_flag(p, "what was stopped")

    p = sub.add_parser("status", help="services and agents registered with the hub")
    config_args(p)
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


    p = sub.add_parser(
        "deploy", help="copy the deployment files that ship with ccaa into a directory",
        description="Write the files for running ccaa as a service into DIR: a Dockerfile "
        "and compose files (a hub host with Prometheus and Grafana; an agent host), systemd "
        "units (the whole stack; agents only), Prometheus' scrape config and alert rules, "
        "Grafana's provisioning and dashboard, and the supervisord configurations. "
        "`--list` prints what would be written.")
    p.add_argument("dir", nargs="?", help="where to write them (created if missing)")
    p.add_argument("--list", action="store_true", help="only list the files")
    p.add_argument("--force", action="store_true", help="overwrite files that differ")
    json_flag(p, "the files (written, already up to date, kept)")


def _env_overrides(assignments: list[str]) -> dict[str, str]:
    """--set a.b=c -> CCAA_A__B=c, so every service under supervisord sees it."""
    env = {}
    for item in assignments:
        key, _, value = item.partition("=")
        env["CCAA_" + "__".join(p.strip().upper() for p in key.split("."))] = value.strip()
    return env


def _progress(line: str) -> None:
    print(f"  ... {line}", file=sys.stderr, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from services.cli import stack

    config = load(args)
    if not args.skip_auth_check and not claude_ready(config, "ccaa up"):
        return exits.USAGE
    if args.foreground:
        return stack.foreground(config, args.config, _env_overrides(args.set))
    reply = stack.up(config, args.config, _env_overrides(args.set), args.timeout,
                     progress=_progress)
    comm = config.communication
    if args.json:
        emit(args, {"hub_id": reply.hub_id, "router": comm.router(), "pub": comm.pub(),
                    "sub": comm.sub(), "logs": str(stack.run_dir(config) / "logs"),
                    "peers": [p.model_dump(mode="json") for p in reply.peers]})
        return 0
    print(f"ccaa is up (hub {reply.hub_id})")
    print(f"  bus (ROUTER)     {comm.router()}")
    print(f"  events (XSUB)    {comm.pub()}")
    print(f"  events (XPUB)    {comm.sub()}")
    for p in reply.peers:
        if p.kind == PeerKind.SERVICE:
            print(f"  {p.name:<16} pid {p.pid:<7} {p.metrics_url}")
    agents = [p for p in reply.peers if p.kind == PeerKind.AGENT]
    print(f"  agents           {len(agents)} registered")
    reporter = next((p for p in reply.peers if p.name == "reporter"), None)
    if reporter is not None and reporter.metrics_url:
        print(f"  dashboard        {reporter.metrics_url.removesuffix('metrics')}")
    hub_port = config.metrics.ports.get("hub", 0)
    if hub_port:
        print(f"  hub metrics      http://{config.metrics.host}:{hub_port}/metrics")
    print(f"  logs             {stack.run_dir(config) / 'logs'}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    import socket

    from libs import nodeconfig
    from libs.config import build_config, flag_overrides, load_tree
    from services.cli import stack

    host = args.host_name or socket.gethostname()
    overrides = flag_overrides(args.set)
    overrides.setdefault("communication", {})["router_endpoint"] = args.hub
    local_tree = load_tree(args.config, overrides=overrides)
    comm = build_config(local_tree).communication
    security.configure(comm.curve, comm.keys_dir, comm.client_key)
    node = asyncio.run(nodeconfig.setup(comm, local_tree, host=host))
    for setting in node.ignored:
        print(f"ccaa node: {setting} in this host's config is not used: the hub's "
              "configuration decides it", file=sys.stderr)
    if node.problems:
        print("ccaa node: this host cannot run what it is asked to:", file=sys.stderr)
        for problem in node.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    config = node.config
    if not args.skip_auth_check and not claude_ready(config, "ccaa node"):
        return exits.USAGE
    if args.foreground:
        return stack.foreground(config, args.config, _env_overrides(args.set), node_host=host)
    found = stack.node(config, args.config, _env_overrides(args.set), host, args.timeout,
                       progress=_progress)
    agents = [p for p in found.peers if p.kind == PeerKind.AGENT and p.host == host]
    if args.json:
        emit(args, {"host": host, "hub_id": found.hub_id, "hub": args.hub,
                    "agents": {role: sum(1 for a in agents if a.role == role)
                               for role in config.agent_hierarchy},
                    "config": str(config.data_path() / nodeconfig.EFFECTIVE_FILE),
                    "logs": str(stack.run_dir(config) / "logs")})
        return 0
    print(f"node {host} is up, attached to hub {found.hub_id} at {args.hub}")
    for role, rc in config.agent_hierarchy.items():
        mine = sum(1 for a in agents if a.role == role)
        if rc.count or mine:
            print(f"  {role:<12} {mine} agent(s)")
    print(f"  config           {config.data_path() / nodeconfig.EFFECTIVE_FILE}")
    print(f"  logs             {stack.run_dir(config) / 'logs'}")
    print("  stop it with     ccaa down" + (f" --config {args.config}" if args.config else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from services.cli import stack

    config = load(args)
    done = stack.down(config)
    emit(args, {"was_running": bool(done), "detail": done},
         *([done] if done and done != stack.DOWN_PLAIN else []),
         "ccaa is down" if done else "ccaa was not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.cli import stack, views

    config = load(args)
    reply = asyncio.run(stack.registry(config))
    if not json_out(args, reply):
        print(views.status_table(reply, config.communication.router()))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    import deploy

    if args.list or not args.dir:
        emit(args, list(deploy.files()), *deploy.files())
        return 0
    written, same, differ = deploy.export(args.dir, force=args.force)
    if args.json:
        emit(args, {"dir": args.dir, "written": written, "unchanged": same, "kept": differ})
        return 1 if differ else 0
    for name in written:
        print(f"wrote {name}")
    if differ:
        print(f"ccaa deploy: {len(differ)} file(s) in {args.dir} differ and were kept "
              f"(--force overwrites): {', '.join(differ)}", file=sys.stderr)
        return 1
    print(f"{len(written)} written, {len(same)} already up to date in {args.dir}")
    return 0


HANDLERS = {"up": cmd_up, "node": cmd_node, "down": cmd_down, "status": cmd_status,
            "deploy": cmd_deploy}
