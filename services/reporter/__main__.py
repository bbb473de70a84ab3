"""python -m services.reporter — event counts and states on /metrics and /api/summary."""

from __future__ import annotations

import argparse
import sys
from typing import Awaitable, Callable

from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.http import json_response
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from services.reporter.service import Reporter


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    holder: dict[str, Reporter] = {}

    def summary(_query: dict[str, str]):
        return json_response(holder["reporter"].summary())

    if args.metrics_port is None:
        args.metrics_port = config.reporting.http_port

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        reporter = Reporter(ctx.registry)
        holder["reporter"] = reporter
        subscriber = EventSubscriber(config.communication.sub(), [""], reporter.on_event,
                                     log=ctx.log)
        subscriber.start()

        async def shutdown() -> None:
            await subscriber.close()

        return shutdown

    return await run_service("reporter", args, config, build,
                             routes={"/api/summary": summary})


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("ccaa-reporter", "The ccaa reporter: subscribes to every event and "
                           "serves counts by type and state on /metrics and /api/summary.")
    return run_main(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
