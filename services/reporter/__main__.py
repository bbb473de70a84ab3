"""python -m services.reporter — event counts and states on /metrics and /api/summary."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import secrets
import sys
from typing import Awaitable, Callable

from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.http import json_response
from libs.peer import RequestFailed, RequestTimeout
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from protocols.command import SessionList
from protocols.peer import RegistryList
from services.reporter.attention import Attention
from services.reporter.dashboard import page
from services.reporter.notify import Notifier
from services.reporter.service import Reporter

#: seconds between registry refreshes for /api/targets (Prometheus service discovery)
PEER_REFRESH_SECONDS = 5.0


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    holder: dict[str, Reporter] = {}

    def summary(_query: dict[str, str]):
        return json_response(holder["reporter"].summary())

    html = page(config.reporting.dashboard_refresh_interval)

    def dashboard(_query: dict[str, str]):
        return 200, "text/html; charset=utf-8", html

    def targets(_query: dict[str, str]):
        return json_response(holder["reporter"].scrape_targets())

    if args.metrics_port is None:
        args.metrics_port = config.reporting.http_port

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        reporter = Reporter(ctx.registry,
                            retention_hours=config.reporting.report_retention_hours)
        holder["reporter"] = reporter
        notifier = Notifier(config.notifications, config.data_path() / "notifications.jsonl",
                            ctx.registry, ctx.log)
        attention = Attention(notifier.notify, config.notifications.stalled_after)

        def on_event(topic, msg) -> None:
            reporter.on_event(topic, msg)
            if notifier.channels:
                attention.on_event(topic, msg)

        subscriber = EventSubscriber(config.communication.sub(), [""], on_event, log=ctx.log)
        subscriber.start()

        async def refresh_peers() -> None:
            while not ctx.stop.is_set():
                if ctx.peer.registered:
                    try:
                        reply = await ctx.peer.request("hub", RegistryList())
                        reporter.set_peers(reply.body.peers)  # type: ignore[attr-defined]
                        listed = await ctx.peer.request("orchestrator", SessionList(limit=20))
                        reporter.set_sessions(listed.body.sessions)  # type: ignore[attr-defined]
                        attention.seed([s.session_id for s in listed.body.sessions
                                        if s.state.value == "running"])
                    except (RequestFailed, RequestTimeout, ConnectionError):
                        pass
                reporter.prune()
                if notifier.channels:
                    attention.check()
                try:
                    await asyncio.wait_for(ctx.stop.wait(), PEER_REFRESH_SECONDS)
                except asyncio.TimeoutError:
                    pass

        refresher = asyncio.ensure_future(refresh_peers())

        async def shutdown() -> None:
            refresher.cancel()
            await subscriber.close()
            await notifier.close()

        return shutdown

    return await run_service("reporter", args, config, build,
                             routes={"/": dashboard, "/api/summary": summary,
                                     "/api/targets": targets},
                             http_token=http_token(config))


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
