"""The gate executor with real tools (ruff, bandit, pytest-cov) on a real small Python
repository: legacy findings do not block, new ones do; coverage may not drop; a tool that
is not installed makes the gate "not available", never a pass or a failure."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from libs.config import GateConfig
from protocols.gate import GateFigures
from protocols.task import TaskSpec
from services.agent.executors.base import RunContext
from services.agent.executors.gate import GateExecutor
from services.orchestrator.gates import evaluate, gate_run
from services.orchestrator.toolchain import resolve
from tests.conftest import tools_or_skip
from tests.integration.test_code_transfer import git

pytestmark = pytest.mark.timeout(120)

LEGACY = '''import os


def add(a, b):
    return a + b


def check(x):
    assert x, "legacy assert"
    return x
'''

TESTS = '''from calc import add, check


def test_add():
    assert add(1, 2) == 3


def test_check():
    assert check(1) == 1
'''


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "proj"
    (path / "tests").mkdir(parents=True)
    git(path.parent, "init", "-q", "-b", "main", str(path))
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "dev")
    (path / "pyproject.toml").write_text('[project]\nname = "proj"\nversion = "0"\n')
    (path / "calc.py").write_text(LEGACY)
    (path / "tests" / "test_calc.py").write_text(TESTS)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base with legacy findings")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def run_gate(repo: Path, tmp_path: Path, gate: GateConfig, name: str, commit_sha: str,
             base: str) -> tuple[GateFigures, object]:
    spec = TaskSpec(task_id=f"gate-{name}", attempt_id="a1", session_id="s1",
                    prompt=gate_run(name, gate, base).model_dump_json(),
                    cwd=str(repo), base_commit=commit_sha, isolate=True, executor="gate")
    ctx = RunContext(spec=spec, agent_id="u1", progress=lambda *a: None)
    executor = GateExecutor(env=dict(os.environ), worktree_root=str(tmp_path / "wt"))
    result = asyncio.run(executor.run(ctx))
    figures = GateFigures.model_validate(ctx.data["gate"])
    verdict = evaluate(gate, {"outcome": result.outcome.value, "exit_code": result.exit_code,
                              "data": ctx.data})
    # a gate leaves neither a worktree nor a branch behind
    assert git(repo, "worktree", "list").count("\n") == 0
    assert git(repo, "branch", "--list", "ccaa/*") == ""
    return figures, verdict


def gates_of(repo: Path) -> dict[str, GateConfig]:
    auto = {n: GateConfig(command="auto")
            for n in ("tests", "coverage", "lint", "security", "test_first", "api")}
    return resolve(str(repo), auto)[0]


def test_lint_blocks_new_findings_but_not_legacy_ones(repo, tmp_path):
    tools_or_skip("ruff")
    base = git(repo, "rev-parse", "HEAD")
    lint = gates_of(repo)["lint"]
    assert lint.kind == "new_findings" and lint.command.startswith("ruff check")
    # the legacy unused import moves down a few lines: still the same finding, no new one
    clean = commit(repo, {"calc.py": '"""Arithmetic."""\n\n' + LEGACY
                          + "\n\ndef mul(a, b):\n    return a * b\n"}, "add mul")
    figures, verdict = run_gate(repo, tmp_path, lint, "lint", clean, base)
    assert verdict.passed, verdict.detail
    assert figures.findings == 1 and figures.base_findings == 1 and figures.new_count == 0
    assert figures.exit_code == 1  # ruff still reports the legacy finding
    # a new unused import is refused, and named
    dirty = commit(repo, {"extra.py": "import sys\n\n\ndef f():\n    return 1\n"}, "extra")
    figures, verdict = run_gate(repo, tmp_path, lint, "lint", dirty, base)
    assert not verdict.passed and figures.new_count == 1
    assert figures.new[0].startswith("extra.py: F401"), figures.new
    assert "1 new finding" in verdict.detail and "extra.py" in verdict.detail


def test_security_blocks_a_new_shell_injection_only(repo, tmp_path):
    tools_or_skip("bandit")
    base = git(repo, "rev-parse", "HEAD")
    security = gates_of(repo)["security"]
    unsafe = commit(repo, {"run.py": "import subprocess\n\n\ndef run(cmd):\n"
                                     "    return subprocess.call(cmd, shell=True)\n"}, "run")
    figures, verdict = run_gate(repo, tmp_path, security, "security", unsafe, base)
    assert figures.base_findings and figures.base_findings >= 1  # the legacy assert (B101)
    assert not verdict.passed
    assert any(f.startswith("run.py: B602") for f in figures.new), figures.new
    assert not any("B101" in f for f in figures.new)


def test_coverage_may_not_drop_below_the_base(repo, tmp_path):
    pytest.importorskip("pytest_cov")
    base = git(repo, "rev-parse", "HEAD")
    coverage = gates_of(repo)["coverage"]
    assert coverage.kind == "no_drop"
    untested = commit(repo, {"more.py": "def a(x):\n    if x:\n        return 1\n"
                                        "    return 2\n\n\ndef b():\n    return 3\n"},
                      "untested code")
    figures, verdict = run_gate(repo, tmp_path, coverage, "coverage", untested, base)
    assert figures.value is not None and figures.base_value is not None
    assert figures.value < figures.base_value and not verdict.passed, verdict.detail
    assert "dropped from" in verdict.detail
    tested = commit(repo, {"tests/test_more.py": "from more import a, b\n\n\ndef test_more():\n"
                                                 "    assert (a(1), a(0), b()) == (1, 2, 3)\n"},
                    "test it")
    figures, verdict = run_gate(repo, tmp_path, coverage, "coverage", tested, base)
    assert verdict.passed, verdict.detail


def test_a_missing_tool_makes_the_gate_not_available(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    for gate in (GateConfig(command="definitely-not-a-tool --check",
                            requires=["definitely-not-a-tool"]),
                 GateConfig(command="definitely-not-a-tool --check"),  # the shell's 127
                 GateConfig(command="python -m nope", requires=["python:no_such_module"])):
        figures, verdict = run_gate(repo, tmp_path, gate, "custom", head, "")
        assert not figures.available and figures.missing, figures
        assert verdict.passed and not verdict.available
        assert "not available" in verdict.detail and gate.command in verdict.detail


def test_a_gate_whose_command_leaves_a_server_holding_its_output_ends_with_it(repo,
                                                                             tmp_path):
    # a test suite that starts a server in the background and forgets it: the gate's
    # verdict is the command's exit code, not a timeout once the server is gone
    head = git(repo, "rev-parse", "HEAD")
    started = time.monotonic()
    for command, passed in (("sleep 300 & echo checked", True),
                            ("sleep 300 & echo checked; exit 1", False)):
        gate = GateConfig(command=command, timeout=60)
        figures, verdict = run_gate(repo, tmp_path, gate, "custom", head, "")
        assert verdict.passed is passed and figures.available, (figures, verdict)
        assert figures.exit_code == (0 if passed else 1) and "checked" in figures.output_head
    assert time.monotonic() - started < 30


def test_a_gate_stopped_while_its_worktree_is_removed_keeps_its_verdict(repo, tmp_path,
                                                                        monkeypatch):
    # the verdict is reached; the agent stops while the gate's worktree is being removed:
    # the agent reports the verdict, not an interrupted attempt to run again
    head = git(repo, "rev-parse", "HEAD")
    gate = GateConfig(command="echo checked", timeout=60)
    spec = TaskSpec(task_id="gate-custom", attempt_id="a1", session_id="s1",
                    prompt=gate_run("custom", gate, "").model_dump_json(),
                    cwd=str(repo), base_commit=head, isolate=True, executor="gate")
    ctx = RunContext(spec=spec, agent_id="u1", progress=lambda *a: None)
    executor = GateExecutor(env=dict(os.environ), worktree_root=str(tmp_path / "wt"))
    real_cleanup = executor._cleanup

    async def scenario() -> None:
        removing, go_on = asyncio.Event(), asyncio.Event()

        async def slow_cleanup(*args):
            removing.set()
            await go_on.wait()
            await real_cleanup(*args)

        monkeypatch.setattr(executor, "_cleanup", slow_cleanup)
        task = asyncio.ensure_future(executor.run(ctx))
        await asyncio.wait_for(removing.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        go_on.set()
        for _ in range(100):  # the shielded removal goes on to its end
            if git(repo, "worktree", "list").count("\n") == 0:
                break
            await asyncio.sleep(0.05)  # wait-ok: polling git under a bound

    asyncio.run(scenario())
    assert ctx.finished is not None and ctx.finished.outcome.value == "succeeded", ctx.finished
    assert GateFigures.model_validate(ctx.data["gate"]).exit_code == 0


def test_tests_gate_runs_pytest_on_the_commit_under_test(repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD")
    tests = gates_of(repo)["tests"]
    figures, verdict = run_gate(repo, tmp_path, tests, "tests", base, "")
    assert verdict.passed and figures.exit_code == 0
    broken = commit(repo, {"calc.py": LEGACY.replace("a + b", "a - b")}, "break add")
    figures, verdict = run_gate(repo, tmp_path, tests, "tests", broken, "")
    assert not verdict.passed and figures.exit_code == 1
    assert "failed" in figures.output_head.lower() or "F" in figures.output_head


def test_a_fix_must_come_with_a_test_that_fails_without_it(repo, tmp_path):
    # the base has a bug no test catches
    base = commit(repo, {"mul.py": "def mul(a, b):\n    return a + b\n"}, "mul, wrong")
    proof = gates_of(repo)["test_first"]
    assert proof.kind == "test_first" and "{tests}" in proof.command
    fixed = "def mul(a, b):\n    return a * b\n"

    # the fix alone: refused, nothing shows the problem
    only_fix = commit(repo, {"mul.py": fixed}, "fix mul")
    figures, verdict = run_gate(repo, tmp_path, proof, "test_first", only_fix, base)
    assert not verdict.passed and figures.tests == []
    assert "adds or changes no test" in verdict.detail

    # a test that passes on the base too proves nothing (2 + 2 == 2 * 2)
    weak = commit(repo, {"tests/test_mul.py": "from mul import mul\n\n\ndef test_mul():\n"
                                              "    assert mul(2, 2) == 4\n"}, "weak test")
    figures, verdict = run_gate(repo, tmp_path, proof, "test_first", weak, base)
    assert figures.tests == ["tests/test_mul.py"]
    assert figures.base_exit_code == 0 and not verdict.passed
    assert "also pass on the base commit" in verdict.detail

    # a test that shows the bug: fails on the base, passes on the branch
    real = commit(repo, {"tests/test_mul.py": "from mul import mul\n\n\ndef test_mul():\n"
                                              "    assert mul(3, 4) == 12\n"}, "real test")
    figures, verdict = run_gate(repo, tmp_path, proof, "test_first", real, base)
    assert verdict.passed, verdict.detail
    assert figures.exit_code == 0 and figures.base_exit_code == 1
    assert "assert 7 == 12" in figures.base_output_head or "7 == 12" in figures.base_output_head

    # the same test with the fix taken back: it fails on the branch as well
    broken = commit(repo, {"mul.py": "def mul(a, b):\n    return a + b\n"}, "undo the fix")
    figures, verdict = run_gate(repo, tmp_path, proof, "test_first", broken, base)
    assert not verdict.passed and "fail on the branch" in verdict.detail


#: the benchmark under test: its work is a sleep of DELAY seconds
BENCH = "import time\n\nDELAY = {delay}\n\n\ndef work():\n    time.sleep(DELAY)\n\n\nwork()\n"  # wait-ok


def test_an_optimization_must_be_faster_than_the_base_beyond_the_noise(repo, tmp_path):
    base = commit(repo, {"bench.py": BENCH.format(delay=0.2)}, "a benchmark")
    bench = GateConfig(command="python bench.py", kind="improvement", rounds=3,
                       requires=["python"])
    faster = commit(repo, {"bench.py": BENCH.format(delay=0.1)}, "twice as fast")
    figures, verdict = run_gate(repo, tmp_path, bench, "benchmark", faster, base)
    assert verdict.passed, verdict.detail
    assert len(figures.samples) == len(figures.base_samples) == 3
    assert figures.improvement > 0.3 and "faster" in verdict.detail
    assert "median" in verdict.detail and "on the base" in verdict.detail

    slower = commit(repo, {"bench.py": BENCH.format(delay=0.3)}, "an 'optimization'")
    figures, verdict = run_gate(repo, tmp_path, bench, "benchmark", slower, base)
    assert not verdict.passed and verdict.detail.startswith("regression"), verdict.detail
    assert figures.improvement < 0

    same = commit(repo, {"bench.py": BENCH.format(delay=0.2), "notes.txt": "tidy\n"}, "no-op")
    figures, verdict = run_gate(repo, tmp_path, bench, "benchmark", same, base)
    assert not verdict.passed, verdict.detail

    # a figure the benchmark prints, higher is better
    printed = GateConfig(command="python -c 'print(\"ops/s:\", 100)'", kind="improvement",
                         pattern=r"ops/s: (\d+)", better="higher", rounds=2)
    figures, verdict = run_gate(repo, tmp_path, printed, "benchmark", same, base)
    assert figures.samples == [100.0, 100.0] and not verdict.passed
    assert "no improvement of 5%" in verdict.detail


def test_a_refactoring_keeps_the_public_api(repo, tmp_path):
    (repo / "pkg").mkdir()
    base = commit(repo, {"pkg/__init__.py": "from pkg.core import area, scale\n\n"
                                            "__all__ = ['area', 'scale']\n",
                         "pkg/core.py": "def area(w, h):\n    return w * h\n\n\n"
                                        "def scale(x, k=2):\n    return x * k\n"}, "a package")
    api = gates_of(repo)["api"]
    assert api.kind == "no_removals"
    # moved into another module, one name added: the API is the same and more
    moved = commit(repo, {"pkg/__init__.py": "from pkg.shapes import area, perimeter, scale\n\n"
                                             "__all__ = ['area', 'perimeter', 'scale']\n",
                          "pkg/shapes.py": "def area(w, h):\n    return w * h\n\n\n"
                                           "def perimeter(w, h):\n    return 2 * (w + h)\n\n\n"
                                           "def scale(x, k=2):\n    return x * k\n"}, "move")
    figures, verdict = run_gate(repo, tmp_path, api, "api", moved, base)
    assert verdict.passed, (verdict.detail, figures.output_head)
    assert "pkg.area(w, h)" in figures.output_head
    # a changed signature is a removal of the old one
    changed = commit(repo, {"pkg/shapes.py": "def area(width, height):\n    return width * height"
                                             "\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)"
                                             "\n\n\ndef scale(x, k=2):\n    return x * k\n"},
                     "rename the parameters")
    figures, verdict = run_gate(repo, tmp_path, api, "api", changed, base)
    assert not verdict.passed and figures.removed == ["pkg.area(w, h)"], figures.removed


def test_a_node_repository_gets_its_own_test_script_as_gates(tmp_path):
    tools_or_skip("node", "npm")
    path = tmp_path / "web"
    path.mkdir()
    git(path.parent, "init", "-q", "-b", "main", str(path))
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "dev")
    base = commit(path, {
        "package.json": '{"name": "web", "version": "1.0.0", "scripts": {"test": "node --test"}}',
        "index.js": "exports.clamp = (x, lo, hi) => Math.max(lo, x);\n",  # the bug: no hi
        "index.test.js": "const test = require('node:test');\nconst assert = "
                         "require('node:assert');\nconst { clamp } = require('./index');\n"
                         "test('low', () => assert.strictEqual(clamp(-1, 0, 9), 0));\n"}, "base")
    gates = resolve(str(path), {n: GateConfig(command="auto")
                                for n in ("tests", "test_first", "lint")})[0]
    assert gates["tests"].command == "npm test --silent" and gates["lint"].command == ""
    figures, verdict = run_gate(path, tmp_path, gates["tests"], "tests", base, "")
    assert verdict.passed and figures.exit_code == 0
    fix = commit(path, {
        "index.js": "exports.clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));\n",
        "high.test.js": "const test = require('node:test');\nconst assert = "
                        "require('node:assert');\nconst { clamp } = require('./index');\n"
                        "test('high', () => assert.strictEqual(clamp(99, 0, 9), 9));\n"}, "fix")
    figures, verdict = run_gate(path, tmp_path, gates["test_first"], "test_first", fix, base)
    assert figures.tests == ["high.test.js"]
    assert verdict.passed and figures.base_exit_code not in (0, None), verdict.detail
