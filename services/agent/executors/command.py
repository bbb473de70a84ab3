"""The ``command`` executor: any CLI (a shell, codex, aider, gemini, ...) through a
command template. ``{prompt}`` and ``{cwd}`` in the template's arguments are replaced
with the task's prompt and working directory; the command runs in the working directory
in a process group of its own, which is killed whole on timeout or cancel. Its exit ends
the attempt: what it left running in its group is killed then (``child``), even if it
still holds the output pipes open.

A command that ends its output with a JSON result line, as `claude -p --output-format
json` does (``{"type": "result", "total_cost_usd": ..., "usage": {...}, "modelUsage":
{...}}``), has its answer, cost and token usage reported like a Claude Code task's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from services.agent import isolation
from services.agent.executors import child
from services.agent.executors.base import ExecutionResult, RunContext, Tail, settle
from protocols.task import Outcome

#: characters of a JSON result line's answer kept (as for a Claude Code task)
RESULT_CHARS = 16_000
#: progress events for output lines, at most this many per second
OUTPUT_EVENTS_PER_SECOND = 5


def render(template: list[str], prompt: str, cwd: str) -> list[str]:
    return [arg.replace("{prompt}", prompt).replace("{cwd}", cwd) for arg in template]


class CommandExecutor:
    name = "command"

    def __init__(self, template: list[str], env: dict[str, str] | None = None,
                 worktree_root: str | None = None, worktree_setup: str = ""):
        if not template:
            raise ValueError("command executor needs a non-empty command template")
        self.template = template
        self.env = env
        self.worktree_root = worktree_root
        self.worktree_setup = worktree_setup

    async def run(self, ctx: RunContext) -> ExecutionResult:
        try:
            ws = await isolation.prepare(ctx, self.worktree_root, self.worktree_setup)
        except RuntimeError as exc:
            return ExecutionResult(Outcome.FAILED, error=f"worktree: {exc}")
        try:
            return await self._run(ctx, ws.run_dir)
        finally:
            done = ctx.finished
            status = ("interrupted" if done is None
                      else "ok" if done.outcome == Outcome.SUCCEEDED else "failed")
            # work that is done has its commit (and branch sent back) in its result, even
            # when the attempt is stopped meanwhile; an interrupted one's goes on unwaited
            await (settle if done is not None else asyncio.shield)(
                isolation.finish(ctx, ws, status))

    async def _run(self, ctx: RunContext, cwd: str) -> ExecutionResult:
        spec = ctx.spec
        argv = render(self.template, spec.prompt, cwd)
        try:
            process = await child.start(argv, cwd, self.env)
        except OSError as exc:
            return ExecutionResult(Outcome.FAILED, error=f"cannot start {argv[0]!r}: {exc}")
        ctx.pgid = process.pid  # start_new_session: the child leads its own group
        ctx.progress("started", f"pid {process.pid}: {' '.join(argv)[:200]}", {"pid": process.pid})
        limiter = _RateLimit(OUTPUT_EVENTS_PER_SECOND)

        def pumps() -> list[Any]:
            return [_pump(process.stdout, ctx.stdout, ctx, "stdout", limiter),
                    _pump(process.stderr, ctx.stderr, ctx, "stderr", limiter)]

        ended_first = False
        try:
            code = await process.run(pumps())
        except asyncio.CancelledError:
            # stopped (cancel, timeout, the agent stopping): had the command ended by itself
            # already, its exit not yet seen by the loop? Then its work is done; it must
            # not be run again as an interrupted attempt.
            ended_first = process.ended()
            raise
        finally:
            if ended_first:
                # what it wrote before it ended (a result line) is still read
                await asyncio.shield(process.exit_seen.wait())
                await process.run(pumps())
                ctx.finished = self._result(ctx, process.returncode)
            else:
                await process.stop()
            process.close()
        ctx.finished = self._result(ctx, code)
        return ctx.finished

    @staticmethod
    def _result(ctx: RunContext, code: int | None) -> ExecutionResult:
        ctx.data.update(reported_usage(ctx.stdout.text()))
        if code == 0:
            return ExecutionResult(Outcome.SUCCEEDED, exit_code=0)
        return ExecutionResult(Outcome.FAILED, exit_code=code, error=f"exit code {code}")


def reported_usage(stdout: str) -> dict[str, Any]:
    """The answer, cost and usage from the output's last line when it is a JSON result
    (Claude Code's ``--output-format json``); nothing otherwise."""
    lines = stdout.rstrip().rsplit("\n", 1)
    try:
        result = json.loads(lines[-1])
    except ValueError:
        return {}
    if not isinstance(result, dict) or result.get("type") != "result":
        return {}
    found: dict[str, Any] = {}
    if isinstance(result.get("result"), str):  # the answer (the orchestrator reads it)
        found["result"] = result["result"][-RESULT_CHARS:]
    cost = result.get("total_cost_usd")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
        found["total_cost_usd"] = float(cost)
    for key, name in (("usage", "usage"), ("modelUsage", "model_usage")):
        if isinstance(result.get(key), dict):
            found[name] = result[key]
    return found


class _RateLimit:
    def __init__(self, per_second: int):
        self.per_second = per_second
        self.window = 0.0
        self.count = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self.window >= 1.0:
            self.window, self.count = now, 0
        self.count += 1
        return self.count <= self.per_second


async def _pump(stream: asyncio.StreamReader | None, tail: Tail, ctx: RunContext, name: str,
                limiter: _RateLimit) -> None:
    if stream is None:
        return
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        text = chunk.decode("utf-8", errors="replace")
        tail.add(text)
        if limiter.allow():
            last = text.rstrip().rsplit("\n", 1)[-1]
            ctx.progress("output", last[:200], {"stream": name})
