"""python -m services.distributor — the ready queue and agent choice."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Awaitable, Callable

from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from protocols import Message
from protocols.events import PeerEvent
from services.distributor.service import Distributor


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        dist = Distributor(config, ctx.peer, ctx.registry, ctx.log)
        for type_, handler in dist.handlers.items():
            ctx.peer.on(type_, handler)

        def on_event(topic: str, msg: Message) -> None:
            body = msg.body
            if not isinstance(body, PeerEvent):
                return
            if body.state in ("lost", "disconnected"):
                dist.agent_down(body.name)
            elif body.state == "registered":
                ctx.peer.spawn(dist.refresh())  # the registry has its role and capacity

        subscriber = EventSubscriber(config.communication.sub(), ["agent."], on_event,
                                     log=ctx.log)
        subscriber.start()
        ctx.peer.on_registered.append(lambda: ctx.peer.spawn(dist.refresh()))
        ctx.peer.on_registered.append(lambda: ctx.peer.spawn(dist.load_records()))

        async def poll() -> None:
            while not ctx.stop.is_set():
                try:
                    await asyncio.wait_for(ctx.stop.wait(), config.orchestrator.reconcile_interval)
                except asyncio.TimeoutError:
                    if ctx.peer.registered:
                        await dist.refresh()
                        await dist.load_records()  # until the orchestrator answered once

        poller = asyncio.ensure_future(poll())

        async def shutdown() -> None:
            poller.cancel()
            await subscriber.close()

        return shutdown

    return await run_service("distributor", args, config, build)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("ccaa-distributor", "The ccaa distributor: queues ready tasks and "
                           "assigns each to an agent by the configured strategy.")
    return run_main(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
