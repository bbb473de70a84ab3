"""The ``gate`` executor: a quality gate's command (protocols.gate.GateRun, the task's
prompt) run in a worktree of the commit under test and, for the comparing kinds, in a
throwaway worktree of the base commit too; what it measured goes back as
``TaskResult.data["gate"]`` (protocols.gate.GateFigures) for the owner to judge.

A gate leaves nothing behind: no commit, no branch; its worktrees go when it ends."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

from pydantic import ValidationError

from libs import worktree
from protocols.gate import GateFigures, GateRun
from protocols.task import Outcome
from services.agent import isolation
from services.agent.executors import child
from services.agent.executors.base import ExecutionResult, RunContext

#: bytes of each stream kept per run (findings are read from all of it)
MAX_OUTPUT = 4 * 1024 * 1024
#: lines of the branch run's output in the report
HEAD_LINES = 20
#: new findings listed in the report
MAX_LISTED = 50
#: what a shell says of a command it cannot find
NOT_FOUND = re.compile(r"command not found|No such file or directory|not found", re.I)


@dataclass
class Run:
    code: int | None
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return f"{self.out}\n{self.err}"


def missing_tools(requires: list[str], env: dict[str, str] | None) -> list[str]:
    """The requirements not met here: executables not on PATH, ``python:<module>`` not
    importable by the ``python`` on PATH."""
    path = (env or os.environ).get("PATH", os.defpath)
    missing = []
    for need in requires:
        if need.startswith("python:"):
            module = need.split(":", 1)[1]
            python = shutil.which("python", path=path) or shutil.which("python3", path=path)
            probe = ("import importlib.util, sys; "
                     f"sys.exit(0 if importlib.util.find_spec({module!r}) else 1)")
            if python is None or subprocess.run([python, "-c", probe], env=env,
                                                capture_output=True).returncode != 0:
                missing.append(f"python module {module}")
        elif shutil.which(need, path=path) is None:
            missing.append(need)
    return missing


def findings(text: str, pattern: str, cwd: str) -> Counter[str]:
    """One entry per finding line, ``path: message``; line numbers are left out so that
    findings that merely moved match."""
    found: Counter[str] = Counter()
    regex = re.compile(pattern, re.MULTILINE)
    prefix = cwd.rstrip("/") + "/"
    for m in regex.finditer(text):
        path = m.group("path").strip().removeprefix(prefix).removeprefix("./")
        message = " ".join(m.group("message").split())
        found[f"{path}: {message}"] += 1
    return found


def figure(pattern: str, text: str) -> float | None:
    matches = re.findall(pattern, text) if pattern else []
    if not matches:
        return None
    last = matches[-1]
    try:
        return float(last[0] if isinstance(last, tuple) else last)
    except ValueError:
        return None


class GateExecutor:
    name = "gate"

    def __init__(self, env: dict[str, str] | None = None, worktree_root: str | None = None,
                 worktree_setup: str = ""):
        self.env = env
        self.worktree_root = worktree_root
        self.worktree_setup = worktree_setup

    async def run(self, ctx: RunContext) -> ExecutionResult:
        try:
            gate = GateRun.model_validate_json(ctx.spec.prompt)
        except ValidationError as exc:
            return ExecutionResult(Outcome.FAILED, error=f"not a gate run: {exc}"[:500])
        try:
            ws = await isolation.prepare(ctx, self.worktree_root, self.worktree_setup)
        except RuntimeError as exc:
            return ExecutionResult(Outcome.FAILED, error=f"worktree: {exc}")
        figures = GateFigures(name=gate.name, kind=gate.kind, command=gate.command)
        try:
            # a verdict reached stands even if the attempt is stopped while its worktree goes
            ctx.finished = await self._gate(ctx, gate, ws, figures)
            return ctx.finished
        finally:
            ctx.data["gate"] = figures.model_dump()
            await asyncio.shield(self._cleanup(ctx, ws))

    async def _gate(self, ctx: RunContext, gate: GateRun, ws: isolation.Workspace,
                    figures: GateFigures) -> ExecutionResult:
        missing = await asyncio.to_thread(missing_tools, gate.requires, self.env)
        if missing:
            return self._not_available(ctx, figures, missing)
        if gate.kind == "test_first":
            return await self._test_first(ctx, gate, ws, figures)
        if gate.kind == "improvement":
            return await self._improvement(ctx, gate, ws, figures)
        branch = await self._exec(ctx, gate, ws.run_dir, tail=True)
        if branch.code == 127 and NOT_FOUND.search(branch.err):
            return self._not_available(ctx, figures, [branch.err.strip().splitlines()[-1][:200]])
        figures.exit_code, figures.seconds = branch.code, round(branch.seconds, 3)
        figures.output_head = _head(branch.text)
        base = None
        if gate.kind in ("new_findings", "no_drop", "no_removals") and gate.compare_to:
            base = await self._on_base(ctx, gate, ws)
            figures.base_exit_code, figures.base_seconds = base.code, round(base.seconds, 3)
        if gate.kind in ("threshold", "no_drop"):
            figures.value = figure(gate.pattern, branch.text)
            if base is not None:
                figures.base_value = figure(gate.pattern, base.text)
        if gate.kind == "new_findings":
            mine = findings(branch.text, gate.finding, ws.run_dir)
            figures.findings = sum(mine.values())
            if base is not None:
                theirs = findings(base.text, gate.finding, self._base_dir(ws))
                figures.base_findings = sum(theirs.values())
                new = mine - theirs
            else:
                new = mine
            figures.new_count = sum(new.values())
            figures.new = sorted(new.elements())[:MAX_LISTED]
        if gate.kind == "no_removals" and base is not None:
            kept = set(branch.out.splitlines())
            gone = [line for line in base.out.splitlines() if line.strip() and line not in kept]
            figures.removed_count, figures.removed = len(gone), gone[:MAX_LISTED]
        ctx.progress("gate", f"{gate.name}: exit {branch.code}"
                     + (f", base exit {base.code}" if base else ""), {"gate": gate.name})
        if branch.code == 0:
            return ExecutionResult(Outcome.SUCCEEDED, exit_code=0)
        return ExecutionResult(Outcome.FAILED, exit_code=branch.code,
                               error=f"exit code {branch.code}")

    async def _test_first(self, ctx: RunContext, gate: GateRun, ws: isolation.Workspace,
                          figures: GateFigures) -> ExecutionResult:
        """The tests the branch adds or changes, run on the branch (must pass) and on the
        base commit with the branch's versions of those files (must fail)."""
        if not gate.compare_to:
            return ExecutionResult(Outcome.FAILED, error="test_first needs the base commit")
        tests = await asyncio.to_thread(changed_tests, ws.run_dir, gate.compare_to,
                                        gate.test_files)
        figures.tests = tests
        if not tests:
            ctx.progress("gate", f"{gate.name}: the branch adds or changes no test",
                         {"gate": gate.name})
            return ExecutionResult(Outcome.FAILED, error="no test added or changed")
        command = gate.command.replace("{tests}", " ".join(shlex.quote(t) for t in tests))
        branch = await self._exec(ctx, gate, ws.run_dir, tail=True, command=command)
        if branch.code == 127 and NOT_FOUND.search(branch.err):
            return self._not_available(ctx, figures, [branch.err.strip().splitlines()[-1][:200]])
        figures.exit_code, figures.seconds = branch.code, round(branch.seconds, 3)
        figures.output_head = _head(branch.text)
        base = await self._on_base(ctx, gate, ws, command=command,
                                   bring=[(os.path.join(ws.run_dir, t), t) for t in tests])
        figures.base_exit_code, figures.base_seconds = base.code, round(base.seconds, 3)
        figures.base_output_head = _head(base.text)
        ctx.progress("gate", f"{gate.name}: {len(tests)} test file(s): exit {base.code} on "
                     f"the base, {branch.code} on the branch", {"gate": gate.name})
        return ExecutionResult(Outcome.SUCCEEDED if branch.code == 0 else Outcome.FAILED,
                               exit_code=branch.code)

    async def _improvement(self, ctx: RunContext, gate: GateRun, ws: isolation.Workspace,
                           figures: GateFigures) -> ExecutionResult:
        """The benchmark on the base and on the branch, ``rounds`` times each, in the order
        base, branch, branch, base, ... so that a drift of the machine hits both alike."""
        if not gate.compare_to:
            return ExecutionResult(Outcome.FAILED, error="improvement needs the base commit")
        repo = ws.wt.repo if ws.wt is not None else ws.run_dir
        base_dir = self._base_dir(ws)
        await asyncio.to_thread(worktree.add_detached, repo, base_dir, gate.compare_to)
        try:
            for r in range(gate.rounds):
                order = (("base", base_dir), ("branch", ws.run_dir))
                for side, cwd in (order if r % 2 == 0 else order[::-1]):
                    run = await self._exec(ctx, gate, cwd, tail=side == "branch" and r == 0)
                    if run.code == 127 and NOT_FOUND.search(run.err):
                        return self._not_available(
                            ctx, figures, [run.err.strip().splitlines()[-1][:200]])
                    if run.code != 0:  # a benchmark that fails measures nothing
                        figures.exit_code = run.code if side == "branch" else 0
                        figures.base_exit_code = run.code if side == "base" else 0
                        figures.output_head = _head(run.text)
                        return ExecutionResult(Outcome.FAILED, exit_code=run.code,
                                               error=f"the benchmark failed on the {side}")
                    value = figure(gate.pattern, run.text) if gate.pattern else run.seconds
                    if value is None:
                        figures.output_head = _head(run.text)
                        return ExecutionResult(Outcome.FAILED, error=f"no figure matched "
                                               f"{gate.pattern!r} on the {side}")
                    (figures.samples if side == "branch" else figures.base_samples).append(
                        round(value, 6))
                ctx.progress("gate", f"{gate.name}: round {r + 1}/{gate.rounds}",
                             {"gate": gate.name, "round": r + 1})
        finally:
            await asyncio.shield(asyncio.to_thread(worktree.remove_detached, repo, base_dir))
        figures.exit_code = figures.base_exit_code = 0
        compare(figures, gate.better)
        return ExecutionResult(Outcome.SUCCEEDED, exit_code=0)

    @staticmethod
    def _not_available(ctx: RunContext, figures: GateFigures,
                       missing: list[str]) -> ExecutionResult:
        figures.available, figures.missing = False, missing
        ctx.progress("gate", f"{figures.name} not available: {', '.join(missing)} "
                     f"(would run: {figures.command})", {"gate": figures.name})
        return ExecutionResult(Outcome.SUCCEEDED, exit_code=None)

    @staticmethod
    def _base_dir(ws: isolation.Workspace) -> str:
        return f"{ws.run_dir.rstrip('/')}.base"

    async def _on_base(self, ctx: RunContext, gate: GateRun, ws: isolation.Workspace,
                       command: str = "", bring: list[tuple[str, str]] = ()) -> Run:
        """The command in a throwaway worktree of the base commit, with ``bring``'s files
        (source, relative path) copied in first."""
        repo = ws.wt.repo if ws.wt is not None else ws.run_dir
        path = self._base_dir(ws)
        await asyncio.to_thread(worktree.add_detached, repo, path, gate.compare_to)
        try:
            for source, rel in bring:
                target = os.path.join(path, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
            return await self._exec(ctx, gate, path, tail=False, command=command)
        finally:
            await asyncio.shield(asyncio.to_thread(worktree.remove_detached, repo, path))

    async def _exec(self, ctx: RunContext, gate: GateRun, cwd: str, tail: bool,
                    command: str = "") -> Run:
        started = time.monotonic()
        proc = await child.start(["bash", "-c", command or gate.command], cwd, self.env)
        ctx.pgid = proc.pid
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            code: int | None = await asyncio.wait_for(
                proc.run([_read(proc.stdout, out), _read(proc.stderr, err)]),
                gate.timeout)
            stdout, stderr = _text(out), _text(err)
        except asyncio.TimeoutError:
            stdout, stderr, code = "", f"timed out after {gate.timeout:g}s", None
        finally:
            await proc.stop()  # whatever it left running in its group
            proc.close()
        if tail:
            ctx.stdout.add(stdout)
            ctx.stderr.add(stderr)
        return Run(code, stdout, stderr, time.monotonic() - started)

    async def _cleanup(self, ctx: RunContext, ws: isolation.Workspace) -> None:
        """A gate's worktree and branch go; it made nothing to keep."""
        if ws.wt is None:
            return
        try:
            await asyncio.to_thread(worktree.remove_branch, ws.wt.repo, ws.wt.branch)
        except RuntimeError as exc:
            ctx.data["git_error"] = f"removing the gate's worktree: {exc}"


def compare(f: GateFigures, better: str) -> None:
    """Medians, the relative gain of the branch over the base (positive: better), and the
    noise: half the widest spread among the base's runs, the branch's runs and the rounds'
    differences (base minus branch, each pair run side by side), relative to the base's
    median. With a handful of runs a median absolute deviation is only as large as the two
    closest runs are apart, so a load that slowed two of three runs of one side went
    unseen; the half-range is what the runs did spread, and a load that moves between
    rounds shows in the differences even where each side's runs agree."""
    base, branch = statistics.median(f.base_samples), statistics.median(f.samples)
    f.base_value, f.value = round(base, 6), round(branch, 6)
    if base == 0:
        f.improvement, f.noise = 0.0, 0.0
        return
    gain = (base - branch) / abs(base)
    f.improvement = round(gain if better == "lower" else -gain, 4)
    diffs = [b - x for b, x in zip(f.base_samples, f.samples)]
    spread = max((max(xs) - min(xs)) / 2 for xs in (f.base_samples, f.samples, diffs))
    f.noise = round(spread / abs(base), 4)


def changed_tests(cwd: str, base: str, pattern: str) -> list[str]:
    """Test files (by path) the checkout at ``cwd`` adds or changes since ``base``."""
    out = worktree.git(cwd, "diff", "--name-only", "--no-renames", "--diff-filter=AM",
                       base, "HEAD")
    regex = re.compile(pattern)
    return sorted(p for p in out.splitlines() if p and regex.search(p)
                  and os.path.isfile(os.path.join(cwd, p)))


def _head(text: str) -> str:
    return "\n".join(text.strip().splitlines()[:HEAD_LINES])[:4000]


async def _read(stream: asyncio.StreamReader | None, chunks: list[bytes]) -> None:
    """Read ``stream`` to its end into ``chunks``, keeping the first MAX_OUTPUT bytes."""
    if stream is None:
        return
    size = sum(map(len, chunks))
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        if size < MAX_OUTPUT:
            chunks.append(chunk[:MAX_OUTPUT - size])
            size += len(chunks[-1])


def _text(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")
