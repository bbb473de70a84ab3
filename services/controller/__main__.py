"""python -m services.controller — this host's agent pools (one controller per host)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import Awaitable, Callable

import psutil
from libs import nodeconfig
from libs.config import ConfigError, load_tree
from libs.log import get_logger
from libs.peer import RegistrationRefused, RequestFailed, RequestTimeout
from libs.runner import overrides_from_args
from protocols.peer import CONTROLLER, PeerHeartbeat, PeerKind, RegistryList, controller_name
from protocols.task import QueueStats
from services.controller import scaling
from services.controller.scaling import Scaler

from libs.config import SystemConfig
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from protocols.events import PeerEvent
from services.controller.metrics import PoolMetrics
from services.controller.pool import AgentPool, Slot, agent_argv


def host_stats() -> dict[str, float]:
    """This host as the registry shows it (`ccaa status` groups agents under it)."""
    mem = psutil.virtual_memory()
    return {"cores": float(psutil.cpu_count() or 0), "memory_mb": mem.total // 2**20,
            "available_mb": mem.available // 2**20, "load1": round(os.getloadavg()[0], 2)}


def parser() -> argparse.ArgumentParser:
    p = common_parser("ccaa-controller", "The ccaa process controller: runs this host's agent "
                      "pools (agent_hierarchy.<role>.count agents per role) and restarts any "
                      "agent that dies. One per host, registered as controller@HOST.")
    p.add_argument("--host-name", default=socket.gethostname(),
                   help="this host's name: in the controller's and agents' names")
    p.add_argument("--node", action="store_true",
                   help="a node of a hub on another host (ccaa node): take role definitions "
                        "and the rest from the hub's configuration, this host's own settings "
                        "only for its counts, limits, scaling, metrics and connection")
    return p


#: exit code when the hub's configuration and this node's cannot make a runnable node
EXIT_NODE_CONFIG = 2


async def node_setup(args: argparse.Namespace, config: SystemConfig) -> SystemConfig:
    """This node's effective configuration, from the hub's (asked for until the hub
    answers), written for its agents. Raises ConfigError for a node that cannot run."""
    log = get_logger(controller_name(args.host_name))
    local = load_tree(args.config, os.environ, overrides_from_args(args))
    comm = config.communication
    while True:
        try:
            node = await nodeconfig.setup(comm, local, host=args.host_name,
                                          name=controller_name(args.host_name),
                                          kind=PeerKind.SERVICE)
            break
        except (RequestTimeout, RequestFailed, ConnectionError) as exc:
            log.warning("node.hub_unreachable", hub=comm.router(), error=str(exc))
            await asyncio.sleep(comm.heartbeat_interval)  # then ask again
    for setting in node.ignored:
        log.warning("node.setting_ignored", setting=setting,
                    reason="the hub's configuration decides it")
    if node.problems:
        raise ConfigError("; ".join(node.problems))
    effective = node.config
    path = effective.data_path() / nodeconfig.EFFECTIVE_FILE
    nodeconfig.write_effective(effective, path)
    log.info("node.configured", hub_id=node.hub_id, config=str(path),
             roles={r: c.count for r, c in effective.agent_hierarchy.items()})
    args.config, args.set = str(path), []  # what the agents are started with
    return effective


def agent_args(args: argparse.Namespace, config: SystemConfig, slot: Slot) -> list[str]:
    comm = config.communication
    argv = [*agent_argv(), "--role", slot.role, "--name", slot.name,
            "--parent-pid", str(os.getpid()), "--host-name", args.host_name,
            "--hub", comm.router(), "--pub", comm.pub(), "--sub", comm.sub(),
            "--log-level", args.log_level]
    if args.config:
        argv += ["--config", args.config]
    for item in args.set:
        argv += ["--set", item]
    return argv


def memory_room(config: SystemConfig, pool: AgentPool, largest_seen_mb: float) -> int:
    """More agents this host's memory allows: what is available, less what the live agents
    may still grow to (each up to what one agent needs while it runs a task), less the
    reserve, in units of that need."""
    per_agent = max(float(config.resources.agent_memory_mb), largest_seen_mb)
    growth = sum(max(0.0, per_agent - pool.memory_mb(s)) for s in pool.live())
    available = psutil.virtual_memory().available / 2**20
    return scaling.memory_room(available - growth, config.resources.reserve_memory_mb,
                               per_agent)


async def scale_once(ctx: ServiceContext, config: SystemConfig, pool: AgentPool,
                     scaler: Scaler, host: str, metrics: PoolMetrics,
                     largest_seen_mb: float = 0.0) -> None:
    """One auto-scaling decision per role, from the distributor's queue, the hub's view
    of this host's agents and this host's available memory."""
    try:
        stats = (await ctx.peer.request("distributor", QueueStats())).body
        peers = (await ctx.peer.request("hub", RegistryList(kind=PeerKind.AGENT))).body
    except (RequestFailed, RequestTimeout, ConnectionError) as exc:
        ctx.log.warning("autoscale.no_data", error=str(exc))
        return
    states = {p.name: p.state.value for p in peers.peers}  # type: ignore[attr-defined]
    now = time.monotonic()
    room = memory_room(config, pool, largest_seen_mb)
    metrics.memory_room.set(room)
    for role in config.agent_hierarchy:
        mine = sorted((s for s in pool.slots.values() if s.role == role), key=lambda s: s.index)
        agents = {s.name: states[s.name] for s in mine if s.name in states}
        last = mine[-1].name if mine else ""
        queued = stats.queued.get(role, 0)  # type: ignore[attr-defined]
        new = scaler.step(role, queued, agents, last, now, room)
        if new is None:
            if room == 0 and scaler.wanted_more(role, queued, agents):
                metrics.memory_bound.labels(role).inc()
                if role not in scaler.memory_bound:  # once, until the pool can grow again
                    scaler.memory_bound.add(role)
                    ctx.log.warning(
                        "pool.memory_bound", role=role, queued=queued, agents=len(mine),
                        reserve_mb=config.resources.reserve_memory_mb,
                        agent_memory_mb=config.resources.agent_memory_mb)
            elif room > 0:
                scaler.memory_bound.discard(role)
            continue
        direction = "up" if new > len(mine) else "down"
        ctx.log.info("pool.scaled", role=role, agents=new, direction=direction, queued=queued)
        metrics.scaled.labels(role, direction).inc()
        pool.resize(role, new, host)
        room = max(0, room - max(0, new - len(mine)))
        await pool.ensure()
        ctx.events.publish("pool.scaled", PeerEvent(name=f"{role}@{host}", kind="pool",
                                                    role=role, state=str(new),
                                                    reason=f"{direction}: {queued} queued"))


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    environ = None
    if args.node:
        try:
            config = await node_setup(args, config)
        except (ConfigError, RegistrationRefused) as exc:
            get_logger(controller_name(args.host_name)).error("node.refused", message=str(exc))
            return EXIT_NODE_CONFIG
        environ = nodeconfig.agent_environ(os.environ)

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        ctx.peer.host = args.host_name
        metrics = PoolMetrics(ctx.registry, list(config.agent_hierarchy))
        log_dir = str(config.data_path() / "logs" / "agents")

        def on_change(event: str, slot: Slot) -> None:
            metrics.changed(event, slot, pool)
            ctx.events.publish(f"pool.{event}", PeerEvent(name=slot.name, kind="agent",
                                                          role=slot.role, state=event))

        pool = AgentPool(lambda slot: agent_args(args, config, slot), ctx.log, env=environ,
                         log_dir=log_dir, on_change=on_change)
        total = 0
        for role, rc in config.agent_hierarchy.items():
            count = min(rc.count, max(0, config.resources.max_agents_total - total))
            if count < rc.count:
                ctx.log.warning("pool.capped", role=role, wanted=rc.count, started=count,
                                max_agents_total=config.resources.max_agents_total)
            total += count
            pool.resize(role, count, args.host_name)
        await pool.ensure()
        counts = {role: sum(1 for s in pool.slots.values() if s.role == role)
                  for role in config.agent_hierarchy}
        scaler = Scaler(config.auto_scaling, counts)

        limit = config.resources.max_memory_mb
        largest = [0.0]  # the most memory one of this host's agents has used (MB)

        async def keep() -> None:
            while not ctx.stop.is_set():
                try:
                    await asyncio.wait_for(ctx.stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    largest[0] = max([largest[0], *(pool.memory_mb(s) for s in pool.live())])
                    if limit:
                        for slot, _ in await pool.enforce_memory(limit):
                            metrics.memory_kills.labels(slot.role).inc()
                    await pool.ensure()

        async def autoscale() -> None:
            while not ctx.stop.is_set():
                try:
                    await asyncio.wait_for(ctx.stop.wait(), config.auto_scaling.interval)
                    return
                except asyncio.TimeoutError:
                    pass
                if ctx.peer.registered:
                    await scale_once(ctx, config, pool, scaler, args.host_name, metrics,
                                     largest[0])

        ctx.peer.heartbeat_body = lambda: PeerHeartbeat(host_stats=host_stats())
        loops = [asyncio.ensure_future(keep())]
        if config.auto_scaling.enabled:
            loops.append(asyncio.ensure_future(autoscale()))

        async def shutdown() -> None:
            for loop in loops:
                loop.cancel()
            await pool.stop()

        return shutdown

    return await run_service(controller_name(args.host_name), args, config, build,
                             metrics_name=CONTROLLER)


def main(argv: list[str] | None = None) -> int:
    return run_main(serve, parser(), argv, spawns_processes=True)


if __name__ == "__main__":
    sys.exit(main())
