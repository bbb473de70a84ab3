"""python -m services.commands — validates and classifies user commands."""

from __future__ import annotations

import argparse
import sys

from libs.config import SystemConfig
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from services.commands.service import Commands


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    async def build(ctx: ServiceContext) -> None:
        commands = Commands(config, ctx.peer, ctx.registry, ctx.log)
        for type_, handler in commands.handlers.items():
            ctx.peer.on(type_, handler)
        return None

    return await run_service("commands", args, config, build)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("ccaa-commands", "The ccaa command system: validates, classifies "
                           "and accepts user commands, creating a session for each.")
    return run_main(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
