"""python -m services.reporter — event counts and states on /metrics and /api/summary."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import secrets
import sys
import time
from typing import Any, Awaitable, Callable

from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.http import json_response
from libs.peer import RequestFailed, RequestTimeout
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from protocols.command import SessionCounts, SessionList
from protocols.peer import RegistryList
from libs.web import AppServer
from services.reporter import web
from services.reporter.attention import Attention
from services.reporter.notify import Notifier
from services.reporter.service import Reporter
from services.reporter.web import EventStreams

#: seconds between refreshes of the registry (for /api/targets: Prometheus service
#: discovery) and of the orchestrator's view, when no page asks for them
PEER_REFRESH_SECONDS = 5.0
#: the registry and the orchestrator's view are asked for again, when a page asks for the
#: summary, once they are older than this (seconds)
VIEW_MAX_AGE_SECONDS = 1.0


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    holder: dict[str, Any] = {"view_at": -VIEW_MAX_AGE_SECONDS}

    async def refresh_view() -> None:
        """The hub's registry, the orchestrator's counts by state and its recent sessions
        (its database is the truth: a restart of this reporter changes nothing), asked for
        at most once a second."""
        ctx, reporter = holder.get("ctx"), holder.get("reporter")
        now = time.monotonic()
        if ctx is None or reporter is None or not ctx.peer.registered or now - holder["view_at"] < \
                VIEW_MAX_AGE_SECONDS:
            return
        holder["view_at"] = now
        registry, listed, counts = await asyncio.gather(
            ctx.peer.request("hub", RegistryList()),
            ctx.peer.request("orchestrator", SessionList(limit=20)),
            ctx.peer.request("orchestrator", SessionCounts()), return_exceptions=True)
        for reply in (registry, listed, counts):  # each on its own: the hub may answer alone
            if isinstance(reply, BaseException) and not isinstance(
                    reply, (RequestFailed, RequestTimeout, ConnectionError)):
                raise reply
        if not isinstance(registry, BaseException):
            reporter.set_peers(registry.body.peers)
        if isinstance(listed, BaseException) or isinstance(counts, BaseException):
            return
        reporter.set_sessions(listed.body.sessions)
        reporter.set_counts(counts.body.sessions, counts.body.tasks)
        holder["attention"].seed([s.session_id for s in listed.body.sessions
                                  if s.state.value == "running"])

    async def summary(_query: dict[str, str]):
        if "reporter" not in holder:
            return json_response({"error": "the reporter is starting"}, 503)
        await refresh_view()
        return json_response(holder["reporter"].summary())

    streams = EventStreams()

    def http_factory(routes, host, port, setting, token):
        extra = web.routes(streams, lambda: holder["ctx"].peer if "ctx" in holder else None,
                           int(config.reporting.dashboard_refresh_interval * 1000),
                           config.reporting.real_time_updates)
        return AppServer(routes, host, port, setting=setting, token=token, extra=extra)

    def targets(_query: dict[str, str]):
        return json_response(holder["reporter"].scrape_targets())

    if args.metrics_port is None:
        args.metrics_port = config.reporting.http_port

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        reporter = Reporter(ctx.registry,
                            retention_hours=config.reporting.report_retention_hours)
        notifier = Notifier(config.notifications, config.data_path() / "notifications.jsonl",
                            ctx.registry, ctx.log)
        attention = Attention(notifier.notify, config.notifications.stalled_after)
        holder.update(reporter=reporter, ctx=ctx, attention=attention)

        def on_event(topic, msg) -> None:
            reporter.on_event(topic, msg)
            streams.publish(topic, msg)
            if notifier.channels:
                attention.on_event(topic, msg)

        subscriber = EventSubscriber(config.communication.sub(), [""], on_event, log=ctx.log)
        subscriber.start()

        async def refresh_peers() -> None:
            while not ctx.stop.is_set():
                if ctx.peer.registered:
                    await refresh_view()
                reporter.prune()
                if notifier.channels:
                    attention.check()
                try:
                    await asyncio.wait_for(ctx.stop.wait(), PEER_REFRESH_SECONDS)
                except asyncio.TimeoutError:
                    pass

        refresher = asyncio.ensure_future(refresh_peers())
        # the first look as soon as the hub knows this reporter, not a refresh period later
        ctx.peer.on_registered.append(lambda: asyncio.ensure_future(refresh_view()))

        async def shutdown() -> None:
            streams.close()
            refresher.cancel()
            await subscriber.close()
            await notifier.close()

        return shutdown

    return await run_service("reporter", args, config, build,
                             routes={"/api/summary": summary, "/api/targets": targets},
                             http_token=http_token(config), http_factory=http_factory)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def http_token(config: SystemConfig) -> str:
    """The token the reporter's endpoints require: the configured one; else, when it
    listens off loopback, one kept in DATA_DIR/reporter.token (made once, mode 0600)."""
    if config.reporting.http_token or is_loopback(config.metrics.host):
        return config.reporting.http_token
    path = config.data_path() / "reporter.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("ccaa-reporter", "The ccaa reporter: subscribes to every event and "
                           "serves counts by type and state on /metrics and /api/summary, and "
                           "every peer's metrics endpoint on /api/targets (Prometheus HTTP SD).")
    return run_main(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
