"""The scaffold of a bus service process: a Peer, an event publisher, a /metrics server,
and an ordered shutdown. Each service module builds one and adds its handlers."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from libs.config import SystemConfig
from libs.events import EventPublisher
from libs.http import Handler, HttpServer, health_routes, metrics_route
from libs.log import EventLogger, get_logger
from libs.metrics import new_registry
from libs.peer import HubUnreachable, Peer, RegistrationRefused
from libs.runner import announce, install_stop_signals
from protocols.peer import PeerKind


#: exit code of a process that gave up reaching the hub (first_contact_deadline)
EXIT_UNREACHABLE = 5


@dataclass
class ServiceContext:
    name: str
    config: SystemConfig
    peer: Peer
    events: EventPublisher
    registry: CollectorRegistry
    log: EventLogger
    http: HttpServer
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def run_service(
    name: str,
    args: argparse.Namespace,
    config: SystemConfig,
    build: Callable[[ServiceContext], Awaitable[Callable[[], Awaitable[None]] | None]],
    routes: dict[str, Handler] | None = None,
    kind: PeerKind = PeerKind.SERVICE,
    first_contact_deadline: float | None = None,
    on_unreachable: Callable[[float], None] | None = None,
    http_token: str = "",
    metrics_name: str = "",
    not_ready: Callable[[], str] | None = None,
    http_factory: Callable[..., Any] | None = None,
) -> int:
    """Wire a service: metrics HTTP (with /healthz and /ready), peer, publisher; call
    ``build`` (which registers handlers and may return an async ``shutdown``); run until
    SIGTERM/SIGINT. Ready means registered with the hub and, if given, ``not_ready()``
    returning "" (a service's own reason, e.g. its database is gone)."""
    log = get_logger(name)
    registry = new_registry()
    key = metrics_name or name  # its entry in metrics.ports
    port = args.metrics_port if args.metrics_port is not None else config.metrics.ports.get(key, 0)
    setting = ("--metrics-port" if args.metrics_port is not None
               else f"metrics.ports.{key}" if key in config.metrics.ports
               else "reporting.http_port" if name == "reporter" else "--metrics-port")
    ports = config.metrics.port_range() if kind == PeerKind.AGENT else None
    if ports is not None and args.metrics_port is None:
        setting = "metrics.agent_ports"
    peer: Peer | None = None  # made below, once the metrics URL is known

    def readiness() -> str:
        if peer is None or not peer.registered:
            return "not registered with the hub"
        return not_ready() if not_ready is not None else ""

    http = (http_factory or HttpServer)(
        {"/metrics": metrics_route(registry), **health_routes(readiness), **(routes or {})},
        config.metrics.host, port, setting=setting, token=http_token)
    await http.start(ports if args.metrics_port is None else None)
    comm = config.communication
    # the URL other hosts scrape (the reporter lists it for Prometheus)
    metrics_url = (f"http://{config.metrics.advertised(config.metrics.host)}:{http.port}"
                   "/metrics")
    peer = Peer(name=name, kind=kind, comm=comm, metrics_url=metrics_url,
                registry=registry, log=log)
    peer.first_contact_deadline = first_contact_deadline
    peer.on_unreachable = on_unreachable
    events = EventPublisher(comm.pub(), name)
    ctx = ServiceContext(name, config, peer, events, registry, log, http)
    install_stop_signals(ctx.stop)
    shutdown = await build(ctx)

    peer_task = asyncio.ensure_future(peer.run())
    peer.on_registered.append(
        lambda: announce(service=name, pid=os.getpid(), metrics=http.url, hub=comm.router())
    )
    stop_task = asyncio.ensure_future(ctx.stop.wait())
    await asyncio.wait({peer_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if peer_task.done() and not peer_task.cancelled():
        exc = peer_task.exception()
        if isinstance(exc, RegistrationRefused):
            log.error("registration.refused", reason=str(exc))
            code = 3
        elif isinstance(exc, HubUnreachable):
            log.error("hub.gave_up", reason=str(exc))
            code = EXIT_UNREACHABLE
        elif exc is not None:
            log.error("peer.crashed", error=repr(exc))
            code = 1
    log.info("stopping")
    if shutdown is not None:
        try:
            await asyncio.wait_for(shutdown(), 30)
        except Exception:
            log.exception("shutdown.failed")
    await peer.stop()
    peer_task.cancel()
    stop_task.cancel()
    await asyncio.gather(peer_task, stop_task, return_exceptions=True)
    events.close()
    await http.close()
    return code
