"""python -m services.orchestrator — durable session and task state, task flow, retries."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Awaitable, Callable

from libs.config import SystemConfig
from libs.events import EventSubscriber
from libs.runner import common_parser, run_main
from libs.service import ServiceContext, run_service
from protocols import Message
from protocols.events import KEYS_TOPIC
from services.orchestrator.maintenance import Maintenance
from services.orchestrator.repo_server import RepoServer
from services.orchestrator.service import Orchestrator
from services.orchestrator.store import Store


#: hub events the audit log records
AUDITED_TOPICS = [f"{kind}.{state}" for kind in ("agent", "service", "client")
                  for state in ("registered", "refused")] + ["handshake.refused", KEYS_TOPIC]


def parser() -> argparse.ArgumentParser:
    p = common_parser("ccaa-orchestrator", "The ccaa orchestrator: keeps sessions, tasks and "
                      "attempts in SQLite and drives every task to a final state.")
    p.add_argument("--db", help="SQLite file (default: DATA_DIR/orchestrator.db)")
    return p


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    db = args.db or str(config.data_path() / "orchestrator.db")
    made: list[Orchestrator] = []

    def not_ready() -> str:
        """Not ready before the store is open, nor once its file is gone or replaced."""
        if not made:
            return "the state database is not open yet"
        return made[0].store_problem

    async def build(ctx: ServiceContext) -> Callable[[], Awaitable[None]]:
        store = Store(db)
        # one transaction per turn of the loop; nothing is sent before it commits
        store.group_commit = True
        ctx.peer.before_flush.append(store.commit)
        orch = Orchestrator(config, store, ctx.peer, ctx.events, ctx.registry, ctx.log)
        made.append(orch)
        for type_, handler in orch.handlers.items():
            ctx.peer.on(type_, handler)

        def repo_of(session_id: str) -> str | None:
            row = store.session(session_id)
            return row["repo"] if row is not None and row["base_commit"] else None

        def has_task(session_id: str, task_id: str) -> bool:
            task = store.task(task_id)
            return task is not None and task.session_id == session_id

        repos = RepoServer(config, repo_of, has_task, ctx.registry, ctx.log)
        for type_, handler in repos.handlers.items():
            ctx.peer.on(type_, handler)

        def on_event(topic: str, msg: Message) -> None:
            if topic in AUDITED_TOPICS:
                orch.on_peer_event(topic, msg)
                return
            name = getattr(msg.body, "name", "")
            if name:
                ctx.peer.spawn(orch.on_agents_lost({name}))

        subscriber = EventSubscriber(config.communication.sub(),
                                     ["agent.lost", "agent.disconnected", *AUDITED_TOPICS],
                                     on_event, log=ctx.log)
        subscriber.start()
        maintenance = Maintenance(config, store, orch.audit, ctx.log)

        async def audit_registry() -> None:
            # registrations published before our subscription was live (at start, or while
            # the hub was restarting) are taken from the registry once it surely is
            await asyncio.sleep(1.0)
            try:
                missing = await orch.audit_registry()
            except Exception as exc:
                ctx.log.warning("audit.registry_failed", error=repr(exc))
            else:
                if missing:
                    ctx.log.info("audit.registry", recorded=missing)

        ctx.peer.on_registered.append(lambda: ctx.peer.spawn(audit_registry()))

        async def tick() -> None:
            await ctx.peer.wait_registered(3600)
            next_maintenance = 0.0
            while not ctx.stop.is_set():
                try:
                    await orch.reconcile()
                except Exception:
                    ctx.log.exception("reconcile.failed")
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + config.orchestrator.maintenance_interval
                    try:
                        await maintenance.run_once()
                    except Exception:
                        ctx.log.exception("maintenance.failed")
                try:
                    await asyncio.wait_for(ctx.stop.wait(), config.orchestrator.reconcile_interval)
                except asyncio.TimeoutError:
                    pass

        ticker = asyncio.ensure_future(tick())

        async def shutdown() -> None:
            ticker.cancel()
            repos.close()
            await subscriber.close()
            store.close()

        ctx.log.info("store.opened", db=db)
        return shutdown

    return await run_service("orchestrator", args, config, build, not_ready=not_ready)


def main(argv: list[str] | None = None) -> int:
    return run_main(serve, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
