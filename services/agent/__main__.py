"""python -m services.agent — one agent process (also `ccaa agent`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Awaitable, Callable

from libs.config import ConfigError, SystemConfig
from libs.runner import common_parser, run_main
from libs.service import EXIT_UNREACHABLE, ServiceContext, run_service
from protocols.peer import PeerKind
from services.agent.executors.base import watch_children_by_pidfd
from services.agent.executors.factory import claude_sessions_dir, executor_factory, role_auth
from services.agent.code import CodeSource
from services.agent.service import Agent


def parser() -> argparse.ArgumentParser:
    p = common_parser("ccaa-agent", "A ccaa agent: connects to a hub, registers its role, "
                      "and runs the tasks it is assigned with its role's executor.")
    p.add_argument("--role", default="worker", help="agent_hierarchy role (default: worker)")
    p.add_argument("--name", help="agent id (default: agent-ROLE-HOST-PID)")
    p.add_argument("--host-name", default=socket.gethostname(),
                   help="the host this agent reports (default: this machine's name; the "
                        "controller passes its own)")
    p.add_argument("--capacity", type=int, help="tasks run at once (default: role's capacity)")
    p.add_argument("--capability", action="append", default=[],
                   help="capability tag to advertise (repeatable; adds to the role's)")
    p.add_argument("--parent-pid", type=int,
                   help="exit when this process dies (set by the controller)")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up if no hub answers the first registration within this long "
                        "(default: 60; a hub lost later is always waited for)")
    p.add_argument("--retry-forever", action="store_true",
                   help="keep trying to reach the hub however long it takes (the default "
                        "for agents a controller starts, i.e. with --parent-pid)")
    return p


async def watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid:
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    role = config.role(args.role)
    name = args.name or f"agent-{args.role}-{args.host_name}-{os.getpid()}"
    make_executor = executor_factory(config, args.role)
    auth = ""
    if role.executor == "claude":  # said in the registration: `ccaa submit` checks it
        status = role_auth(config, args.role)
        auth = "ok" if status.ok else status.detail[:512]
        if not status.ok:
            print(f"ccaa agent {name}: Claude Code cannot authenticate: {status.detail}",
                  file=sys.stderr, flush=True)

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        peer = ctx.peer
        peer.auth = auth
        peer.host = args.host_name
        peer.role = args.role
        peer.capacity = args.capacity or role.capacity
        peer.capabilities = sorted(set(role.capabilities) | set(args.capability))
        code = CodeSource(config, peer, ctx.log)
        agent = Agent(peer, ctx.events, make_executor, ctx.registry,
                      config.orchestrator.result_resend_interval, ctx.log, code,
                      claude_sessions_dir(config))
        for type_, handler in agent.handlers.items():
            peer.on(type_, handler)
        loops = [asyncio.ensure_future(agent.resend_loop(ctx.stop))]

        def stop_signal() -> None:
            # a stop signal usually reaches the whole process group, the task's processes
            # too: whatever fails from now on is reported interrupted, not failed
            agent.stopping = True
            ctx.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop_signal)
        if args.parent_pid:
            loops.append(asyncio.ensure_future(watch_parent(args.parent_pid, ctx.stop)))

        async def shutdown() -> None:
            await agent.stop()
            await asyncio.sleep(0.05)  # let the last results leave; they are resent if not
            for loop in loops:
                loop.cancel()

        return shutdown

    forever = args.retry_forever or args.parent_pid is not None
    said = [0.0]

    def unreachable(waited: float) -> None:
        if forever or waited - said[0] < 10 and said[0]:
            return  # a line every ~10 s is enough for a person
        said[0] = waited
        print(f"ccaa agent: no answer from the hub at {config.communication.router()} "
              f"after {waited:.0f}s; trying until {args.connect_timeout:g}s "
              "(--retry-forever to keep trying)", file=sys.stderr, flush=True)

    code = await run_service(name, args, config, build, kind=PeerKind.AGENT,
                             first_contact_deadline=None if forever else args.connect_timeout,
                             on_unreachable=unreachable)
    if code == EXIT_UNREACHABLE:
        print(f"ccaa agent: gave up: no hub answered at {config.communication.router()} "
              f"within {args.connect_timeout:g}s (is it up? check the address, or the "
              "CurveZMQ keys)", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = parser()
    watch_children_by_pidfd()
    try:
        return run_main(serve, p, argv, spawns_processes=True)
    except ConfigError as exc:
        print(f"{p.prog}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
