"""`ccaa prune`: delete the ccaa/* branches that sessions left in a repository once those
sessions have been over for a while (work branches, result branches with --results), and
the worktree records git keeps of directories already gone. A running session's branches,
and those of sessions ended more recently than --older-than, are kept."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from libs import worktree
from libs.client import BusClient
from libs.config import SystemConfig
from libs.peer import RequestFailed
from protocols.command import CommandStatus
from services.cli.args import config_args, duration, emit, json_flag

PREFIX = "ccaa/"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="delete the ccaa/* branches of sessions that ended a while ago",
        description="Delete from --repo the ccaa/SESSION/... branches of sessions that ended "
        "more than --older-than ago (or that the orchestrator no longer knows: pruned by "
        "orchestrator.retention_days). A session's result branch is kept unless --results. "
        "Running sessions' branches are never touched. --dry-run lists what would go.")
    config_args(p)
    p.add_argument("--repo", default=".", help="the repository (default: .)")
    p.add_argument("--older-than", type=duration, default=7 * 86400, metavar="AGE",
                   help="ended at least this long ago: 12h, 7d (default), 30d")
    p.add_argument("--results", action="store_true",
                   help="also delete result branches (ccaa/SESSION/result)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    json_flag(p, "the branches deleted (or, with --dry-run, that would be) and kept")


def session_branches(repo: str) -> dict[str, list[str]]:
    out = worktree.git(repo, "for-each-ref", "--format=%(refname:short)", f"refs/heads/{PREFIX}")
    by_session: dict[str, list[str]] = {}
    for branch in out.split():
        parts = branch.split("/")
        if len(parts) >= 3:
            by_session.setdefault(parts[1], []).append(branch)
    return by_session


async def _ended_at(config: SystemConfig, sessions: list[str]) -> dict[str, float | None]:
    """When each session ended (None: still running); 0 for one the orchestrator does not
    know any more."""
    ended: dict[str, float | None] = {}
    async with BusClient(config.communication) as bus:
        for sid in sessions:
            try:
                reply = await bus.request("orchestrator", CommandStatus(session_id=sid))
            except RequestFailed as exc:
                if str(getattr(exc.code, "value", exc.code)) != "not_found":
                    raise
                ended[sid] = 0.0
                continue
            info = reply.body.session  # type: ignore[attr-defined]
            ended[sid] = None if info.state.value == "running" else info.updated_at
    return ended


def cmd_prune(args: argparse.Namespace, config: SystemConfig) -> int:
    repo = worktree.repo_root(args.repo)
    branches = session_branches(repo)
    ended = asyncio.run(_ended_at(config, sorted(branches)))
    cutoff = time.time() - args.older_than
    doomed, kept = [], []
    for sid, names in sorted(branches.items()):
        when = ended.get(sid)
        for name in names:
            old = when is not None and when <= cutoff
            result = name.endswith("/result")
            (doomed if old and (args.results or not result) else kept).append(name)
    if not args.dry_run:
        worktree.git(repo, "worktree", "prune")
        for name in doomed:
            worktree.remove_worktrees_of(repo, name)
        for i in range(0, len(doomed), 200):
            worktree.git(repo, "branch", "-D", *doomed[i:i + 200])
    verb = "would delete" if args.dry_run else "deleted"
    emit(args, {"repo": repo, "deleted" if not args.dry_run else "would_delete": doomed,
                "kept": kept},
         *[f"{verb} {name}" for name in doomed],
         f"{verb} {len(doomed)} branch(es) of {len({n.split('/')[1] for n in doomed})} "
         f"session(s); kept {len(kept)} (running, recent, or results)")
    return 0


def main_for(args: argparse.Namespace, config: SystemConfig) -> int:
    try:
        return cmd_prune(args, config)
    except RuntimeError as exc:  # git refused
        print(f"ccaa prune: {exc}", file=sys.stderr)
        return 2
