"""Run an attempt in its task's git worktree and commit what it changed: shared by the
executors (``spec.isolate`` on a git repository; anything else runs in place)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from libs import worktree
from libs.peer import RequestFailed, RequestTimeout
from libs.transfer import TransferError
from services.agent.executors.base import RunContext


@dataclass
class Workspace:
    run_dir: str
    base: str  # commit the changes are measured from ("" outside git)
    wt: worktree.Worktree | None
    transferred: bool = False  # made from this host's cache: the branch goes back


async def prepare(ctx: RunContext, root: str | None, setup: str = "",
                  setup_timeout: float = worktree.SETUP_TIMEOUT) -> Workspace:
    """The directory to run in: the task's worktree, made from the session's repository
    or (code over the bus) this host's cache of it. Raises RuntimeError when there is
    none to be had."""
    spec = ctx.spec
    cwd = os.path.abspath(spec.cwd or os.getcwd())
    transferred = False
    if ctx.code is not None:
        try:
            source = await ctx.code.checkout(spec, ctx.progress)
        except (RequestFailed, RequestTimeout, TransferError) as exc:
            raise RuntimeError(f"the repository could not be fetched over the bus: "
                               f"{exc}") from None
        cwd, transferred = source.repo, source.transferred
        ctx.data["code"] = "transferred" if transferred else "in place"
    if not os.path.isdir(cwd):
        raise RuntimeError(f"working directory {cwd} does not exist on this host")
    # no .git at or above it: surely no repository, and no git process (or thread) to ask
    is_repo = worktree.dot_git(cwd) is not None and \
        await asyncio.to_thread(worktree.is_git_repo, cwd)
    wt = None
    if spec.isolate and is_repo:
        wt = await asyncio.to_thread(worktree.create, cwd, spec.session_id, spec.task_id,
                                     spec.base_commit, root, setup, setup_timeout)
        ctx.data.update(worktree=wt.path, branch=wt.branch, base_commit=wt.base)
        ctx.progress("worktree", f"{'new' if wt.created else 'reused'} worktree {wt.path} "
                     f"on {wt.branch}", {"path": wt.path, "branch": wt.branch,
                                         "created": wt.created})
    elif spec.isolate:
        ctx.data["isolated"] = False
        ctx.progress("worktree", f"{cwd} is not a git repository: running in place", {})
    run_dir = wt.path if wt else cwd
    base = ""
    if is_repo:
        base = (wt.base if wt else spec.base_commit) or \
            await asyncio.to_thread(worktree.head, run_dir)
    return Workspace(run_dir, base, wt, transferred)


def record_changes(ctx: RunContext, ws: Workspace, status: str) -> None:
    """Commit the worktree's changes (blocking: call through asyncio.to_thread) and put
    branch, commit, files changed and diff stat into ``ctx.data``."""
    if not ws.base:
        return
    if ws.wt is not None:
        spec = ctx.spec
        title = (spec.title or spec.prompt).strip().splitlines()[0][:72]
        note = "" if status == "ok" else f"\n\nThe attempt ended {status}; partial work."
        sha = worktree.commit(ws.wt, f"ccaa {spec.task_id}: {title}\n\n"
                                     f"session {spec.session_id}, attempt {spec.attempt_id}"
                                     f"{note}")
        ctx.data["committed"] = sha is not None
        if sha is not None and status != "ok":
            ctx.data["committed_after_failure"] = True
        ctx.data["commit"] = sha or worktree.head(ws.wt.path)
    ctx.data["files_changed"] = worktree.files_changed(ws.run_dir, ws.base)
    ctx.data["diff_stat"] = worktree.diff_stat(ws.run_dir, ws.base)


async def finish(ctx: RunContext, ws: Workspace, status: str) -> None:
    if not ws.base and not ws.transferred:
        return  # outside git: nothing to commit or send back
    try:
        await asyncio.to_thread(record_changes, ctx, ws, status)
    except RuntimeError as exc:
        ctx.data["git_error"] = str(exc)
        if ws.transferred:
            ctx.data["code_error"] = f"the task's work could not be committed: {exc}"
        return
    if ws.transferred and ws.wt is not None and ctx.code is not None:
        commit = ctx.data.get("commit", "")
        try:
            sent = await ctx.code.send_back(ctx.spec, ws.wt.repo, ws.wt.branch, ws.base, commit)
        except (RequestFailed, RequestTimeout, TransferError, RuntimeError) as exc:
            ctx.data["code_error"] = f"the branch {ws.wt.branch} could not be sent back: {exc}"
            return
        finally:
            try:
                # a retry makes it again at the same path, so a Claude Code session there
                # resumes; the branch is the repository host's now (a retry fetches it)
                await asyncio.to_thread(worktree.remove_branch, ws.wt.repo, ws.wt.branch)
            except RuntimeError as exc:
                ctx.data["git_error"] = f"removing the worktree: {exc}"
        ctx.data["sent_bytes"] = sent
        if sent:
            ctx.progress("code", f"sent {ws.wt.branch} back ({sent} bytes)",
                         {"sent_bytes": sent, "branch": ws.wt.branch})
