"""The ``claude`` executor: the real Claude Code CLI driven through claude-agent-sdk.

The role configures the model, the system prompt (Claude Code's own, with the role's
``system_prompts`` appended), turn and budget limits, tool rules and permission mode;
the task brings the prompt, the working directory and optionally a Claude session to
resume. Progress streams as events (see ``claude_stream``) and ``ctx.data`` carries the
result, cost, tokens and the files changed.

With ``spec.isolate`` on a git repository the run happens in a worktree of its own on
branch ``ccaa/<session>/<task>``, and whatever changed is committed there afterwards.

The SDK starts the CLI as a child in our own process group, so it cannot be killed as a
group: the executor follows the process tree instead (``ProcessTree``): the CLI's pid
from the transport, its descendants and the process groups they lead (each Bash tool's
shell has its own), watched while the run lasts, plus every process whose environment
carries the run's ``$CCAA_RUN_COOKIE`` (which catches a grandchild re-parented after its
shell exited). In a ``finally`` it sends the CLI SIGTERM (so it can save its session),
then SIGKILLs all of them, and only then lets the SDK close its end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from claude_agent_sdk import ClaudeAgentOptions, ProcessError, query

# not exported by the SDK: subclassed to learn the CLI's pid (checked with 0.2.187)
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from libs.config import RoleConfig
from libs.log import get_logger
from libs import worktree
from services.agent import isolation
from services.agent.executors import transcripts
from services.agent.executors.base import ExecutionResult, RunContext, settle
from services.agent.executors.claude_stream import ClaudeStream
from protocols.task import Outcome, TaskSpec

CLI_PATH_ENV = "CCAA_CLAUDE_PATH"
#: seconds the CLI gets after SIGTERM (to save its session) before the tree is killed
GRACE_SECONDS = 3.0
#: seconds to wait for killed processes to disappear, and for the SDK to close
CLOSE_SECONDS = 10.0
#: set in the CLI's environment to a value unique to the run; marks its processes
RUN_COOKIE_ENV = "CCAA_RUN_COOKIE"
#: seconds between looks at the CLI's process tree while it runs
WATCH_SECONDS = 0.2

log = get_logger("agent.claude")
_warned: set[str] = set()


def bundled_cli() -> str | None:
    import claude_agent_sdk

    path = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(path) if path.is_file() else None


def resolve_cli(explicit: str | None = None) -> str:
    """The ``claude`` binary to run: ``explicit`` (config), then ``$CCAA_CLAUDE_PATH``,
    then ``claude`` on PATH, then the one bundled with claude-agent-sdk."""
    for source, given in (("configured path", explicit),
                          (f"${CLI_PATH_ENV}", os.environ.get(CLI_PATH_ENV))):
        if given:
            path = shutil.which(given) or given
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise FileNotFoundError(f"Claude Code CLI {source} {given!r} is not an "
                                        "executable file")
            return path
    found = shutil.which("claude") or bundled_cli()
    if not found:
        raise FileNotFoundError(
            f"Claude Code CLI not found: set {CLI_PATH_ENV}, put `claude` on PATH "
            "(npm install -g @anthropic-ai/claude-code) or install claude-agent-sdk "
            "with its bundled CLI")
    return found


def _warn_once(key: str, event: str, **fields: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(event, **fields)


class _Transport(SubprocessCLITransport):
    """The SDK's subprocess transport, remembering the CLI's pid and exit code."""

    pid: int | None = None
    returncode: int | None = None

    def __init__(self, *args: Any, on_start: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_start = on_start

    async def connect(self) -> None:
        await super().connect()
        process = getattr(self, "_process", None)
        self.pid = getattr(process, "pid", None)
        if self.pid is not None and self._on_start is not None:
            self._on_start(self.pid)

    async def close(self) -> None:
        process = getattr(self, "_process", None)
        try:
            await super().close()
        finally:
            if process is not None and process.returncode is not None:
                self.returncode = process.returncode


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class ProcessTree:
    """A process, its descendants and the process groups they lead, seen over time
    (``watch``), so that even children the CLI left behind, or that were re-parented
    after a double fork, can be found and killed at the end. ``cookie``, the value of
    ``$CCAA_RUN_COOKIE`` given to the CLI (and inherited by everything it starts),
    finds those that left both the tree and their group before they were seen."""

    def __init__(self, cookie: str = "") -> None:
        self.cookie = cookie
        self.root: psutil.Process | None = None
        self.known: dict[int, psutil.Process] = {}
        self.groups: set[int] = set()
        self.since = time.time() - 1.0
        self._own_group = os.getpgrp()

    def set_root(self, pid: int) -> None:
        try:
            self.root = psutil.Process(pid)
        except psutil.Error:
            return
        self.known[pid] = self.root
        self.refresh()

    def refresh(self) -> None:
        if self.root is None or _gone(self.root):
            return
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            self.known.setdefault(child.pid, child)
            try:
                group = os.getpgid(child.pid)
            except OSError:
                continue
            if group != self._own_group:
                self.groups.add(group)

    def _members(self) -> list[psutil.Process]:
        """Every live process of the tree: known ones, members of its groups, and any
        process started since the run whose environment carries the run's cookie."""
        procs = {p.pid: p for p in self.known.values() if not _gone(p)}
        for proc in psutil.process_iter():
            try:
                if proc.pid in procs or proc.create_time() < self.since or _gone(proc):
                    continue
                if os.getpgid(proc.pid) in self.groups or (
                        self.cookie and proc.environ().get(RUN_COOKIE_ENV) == self.cookie):
                    procs[proc.pid] = proc
            except (OSError, psutil.Error):
                continue
        return list(procs.values())

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        """Refresh every ``interval`` seconds (cancel to stop): short-lived shells that
        leave children behind are seen while they still live."""
        while True:
            self.refresh()
            await asyncio.sleep(interval)

    def alive(self) -> list[psutil.Process]:
        self.refresh()
        return self._members()

    async def stop(self, grace: float = GRACE_SECONDS, wait: float = CLOSE_SECONDS) -> list[int]:
        """SIGTERM the root, give it ``grace`` seconds, then SIGKILL the whole tree and
        its groups; wait until they are gone. Returns pids still alive (ideally none)."""
        self.refresh()
        root = self.root
        if root is not None and not _gone(root) and grace > 0:
            try:
                root.terminate()
            except psutil.Error:
                pass
            deadline = time.monotonic() + grace
            while not _gone(root) and time.monotonic() < deadline:
                self.refresh()
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + wait
        while True:
            members = self.alive()
            for group in self.groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for proc in members:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            members = [p for p in members if not _gone(p)]
            if not members or time.monotonic() >= deadline:
                return [p.pid for p in members]
            await asyncio.sleep(0.05)


class ClaudeExecutor:
    name = "claude"

    def __init__(self, role: RoleConfig, env: dict[str, str] | None = None,
                 cli_path: str | None = None, worktree_root: str | None = None,
                 worktree_setup: str = "", setup_timeout: float = worktree.SETUP_TIMEOUT):
        self.role = role
        self.env = {k: v for k, v in (env or {}).items() if k != "CLAUDECODE"}
        self.env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        if role.max_tokens:
            self.env.setdefault("CLAUDE_CODE_MAX_OUTPUT_TOKENS", str(role.max_tokens))
        self.cli_path = cli_path
        self.worktree_root = worktree_root
        self.worktree_setup = worktree_setup
        self.setup_timeout = setup_timeout
        if role.temperature is not None:
            _warn_once(f"temperature:{role.model}:{role.temperature}",
                       "claude.temperature_not_applied", model=role.model,
                       temperature=role.temperature,
                       reason="the Claude Code CLI has no temperature setting; the role's "
                              "temperature is ignored by the claude executor")

    def options(self, ctx: RunContext, cwd: str, cli: str, cookie: str = "",
                resume: str | None = None) -> ClaudeAgentOptions:
        role = self.role
        system_prompt: dict[str, Any] = {"type": "preset", "preset": "claude_code"}
        if role.system_prompts:
            system_prompt["append"] = "\n\n".join(role.system_prompts)
        return ClaudeAgentOptions(
            cwd=cwd, cli_path=cli, env={**self.env, RUN_COOKIE_ENV: cookie},
            model=role.model or None,
            system_prompt=system_prompt,  # type: ignore[arg-type]
            max_turns=role.max_turns, max_budget_usd=role.max_budget_usd,
            allowed_tools=list(role.allowed_tools),
            disallowed_tools=list(role.disallowed_tools),
            permission_mode=role.permission_mode or None,  # type: ignore[arg-type]
            resume=resume,
            stderr=lambda line: ctx.stderr.add(line + "\n"),
        )

    async def run(self, ctx: RunContext) -> ExecutionResult:
        spec = ctx.spec
        try:
            cli = resolve_cli(self.cli_path)
        except FileNotFoundError as exc:
            return ExecutionResult(Outcome.FAILED, error=str(exc))
        if self.role.temperature is not None:
            ctx.data["temperature_ignored"] = self.role.temperature
        try:
            ws = await isolation.prepare(ctx, self.worktree_root, self.worktree_setup,
                                         self.setup_timeout)
        except RuntimeError as exc:
            return ExecutionResult(Outcome.FAILED, error=f"worktree: {exc}")
        run_dir = ws.run_dir
        prompt, resume = await self._resumption(ctx, run_dir)

        stream = ClaudeStream(ctx)
        cookie = f"{spec.attempt_id}-{uuid.uuid4().hex[:12]}"
        tree = ProcessTree(cookie)

        def started(pid: int) -> None:
            tree.set_root(pid)
            ctx.data["pid"] = pid
            ctx.progress("started", f"pid {pid}: {os.path.basename(cli)} in {run_dir}",
                         {"pid": pid, "cli": cli, "resume": resume})

        options = self.options(ctx, run_dir, cli, cookie, resume)
        transport = _Transport(prompt, options, on_start=started)
        consumer = asyncio.ensure_future(self._consume(prompt, options, transport,
                                                       stream, tree))
        watcher = asyncio.ensure_future(tree.watch())
        try:
            await asyncio.wait({consumer})
        finally:
            watcher.cancel()
            if consumer.done():
                # the run ended by itself, even if the attempt is being stopped meanwhile:
                # its work is committed (and sent back) before its result stands
                status = "ok" if stream.result and not stream.result.is_error else "failed"
                try:
                    await settle(self._cleanup(ctx, consumer, tree, ws, status))
                finally:
                    ctx.finished = self._outcome(spec, consumer, transport, stream)
            else:
                await _shielded(self._cleanup(ctx, consumer, tree, ws, "interrupted"))
        return ctx.finished

    @staticmethod
    def _outcome(spec: TaskSpec, consumer: asyncio.Future[None], transport: _Transport,
                 stream: ClaudeStream) -> ExecutionResult:
        exc = None if consumer.cancelled() else consumer.exception()
        code = transport.returncode
        if isinstance(exc, ProcessError) and exc.exit_code is not None:
            code = exc.exit_code
        if exc is not None and stream.result is None:
            log.warning("claude.run_failed", task=spec.task_id,
                        error=f"{type(exc).__name__}: {exc}")
        return stream.outcome(exc, code)

    async def _resumption(self, ctx: RunContext, run_dir: str) -> tuple[str, str | None]:
        """The prompt and the session to resume: the previous attempt's session when its
        transcript can be put where the CLI looks (see ``transcripts``), else a fresh one
        told what the previous attempt reported."""
        spec = ctx.spec
        if not spec.resume_session:
            return spec.prompt, None

        async def fetch(agent: str, body: Any) -> Any:
            return (await ctx.ask(agent, body, timeout=transcripts.FETCH_TIMEOUT)).body

        restored = await transcripts.restore(
            transcripts.config_dir(self.env), run_dir, spec.resume_session, spec.prefer_agent,
            ctx.agent_id, fetch if ctx.ask is not None else None)
        ctx.data["resume_mode"] = restored.mode
        summary = ("resumes the previous attempt's session" if restored.resumes
                   else "a fresh session with the previous attempt's report")
        log.info("claude.resume", task=spec.task_id, mode=restored.mode, session=spec.resume_session,
                 detail=restored.detail)
        ctx.progress("resume", f"{summary}: {restored.detail}",
                     {"mode": restored.mode, "session": spec.resume_session})
        if restored.resumes:
            return spec.prompt, spec.resume_session
        return transcripts.fresh_prompt(spec.prompt, spec.previous_summary, restored.detail), None

    async def _consume(self, prompt: str, options: ClaudeAgentOptions, transport: _Transport,
                       stream: ClaudeStream, tree: ProcessTree) -> None:
        messages = query(prompt=prompt, options=options, transport=transport)
        try:
            async for message in messages:
                tree.refresh()
                stream.handle(message)
        finally:
            await messages.aclose()

    async def _cleanup(self, ctx: RunContext, consumer: asyncio.Future[None], tree: ProcessTree,
                       ws: isolation.Workspace, status: str) -> None:
        interrupted = not consumer.done()
        if interrupted:
            ctx.data["interrupted"] = True
        left = await tree.stop(grace=GRACE_SECONDS if interrupted else 0.0)
        if left:
            ctx.data["processes_left"] = left
            log.error("claude.processes_left", task=ctx.spec.task_id, pids=left)
        if interrupted:
            consumer.cancel()
            await asyncio.wait({consumer}, timeout=CLOSE_SECONDS)
        await isolation.finish(ctx, ws, status)


async def _shielded(coro: Any) -> None:
    """Run cleanup to the end even if this task is cancelled (again) meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task}, timeout=CLOSE_SECONDS + GRACE_SECONDS)
        raise
