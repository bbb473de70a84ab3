"""The REAL Claude Code CLI against the scripted model server: real tool calls change real
files, usage and cost come from the scripted usage, API errors end the run with an error,
and a stalled model leaves the CLI waiting until its process group is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.model_server.server import ModelServer

pytestmark = [pytest.mark.claude]

SCRIPTS = Path(__file__).resolve().parents[1] / "model_scripts"


def claude_path() -> str | None:
    explicit = os.environ.get("CCAA_CLAUDE_PATH")
    if explicit:
        return explicit
    found = shutil.which("claude")
    if found:
        return found
    try:
        import claude_agent_sdk
    except ImportError:
        return None
    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    return str(bundled) if bundled.is_file() else None


@pytest.fixture(scope="module")
def claude() -> str:
    path = claude_path()
    if path is None:
        pytest.skip("no claude binary (CCAA_CLAUDE_PATH, PATH or claude-agent-sdk's bundled one)")
    return path


def claude_env(url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "CLAUDECODE" and not k.startswith("ANTHROPIC_")}
    env.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="test-key", HOME=str(home),
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", CLAUDE_CODE_MAX_RETRIES="0")
    return env


class Run:
    """One `claude -p` run in its own process group, its stdout in a file."""

    def __init__(self, claude: str, server: ModelServer, prompt: str, tmp_path: Path):
        self.cwd = tmp_path / "work"
        home = tmp_path / "home"
        self.cwd.mkdir()
        home.mkdir()
        self.out_path = tmp_path / "stdout.jsonl"
        self.err_path = tmp_path / "stderr.txt"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [claude, "-p", prompt, "--output-format", "stream-json", "--verbose",
                 "--permission-mode", "acceptEdits", "--model", "sonnet", "--max-turns", "5"],
                cwd=self.cwd, env=claude_env(server.url, home), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True)

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out_path.read_text().splitlines() if line]

    def explain(self) -> str:
        return f"stdout:\n{self.out_path.read_text()[-3000:]}\nstderr:\n{self.err_path.read_text()}"

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float) -> list[int]:
    """Polls (deadline-bounded) until no live process is left in the group; what is left."""
    deadline = time.monotonic() + timeout
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait-ok: polling the process table under a deadline
    return left


@pytest.mark.timeout(120)
def test_write_then_edit_then_final_text(claude, tmp_path):
    with ModelServer([SCRIPTS / "model_server_write_edit.yaml"]) as server:
        run = Run(claude, server, "MS-WRITE-EDIT: create hello.py, then edit it", tmp_path)
        try:
            assert run.wait() == 0, run.explain()
        finally:
            run.kill()
        requests = list(server.requests)

    assert (run.cwd / "hello.py").read_text() == "print('hello, edited')\n"
    lines = run.lines()
    result = lines[-1]
    assert result["type"] == "result" and result["is_error"] is False, run.explain()
    assert result["num_turns"] == 3 and result["result"] == "hello.py now prints an edited greeting."
    # the CLI sums the usage the server reported over the conversation's turns
    usage = result["usage"]
    assert usage["input_tokens"] == 1000 + 1100 + 1200
    assert usage["output_tokens"] == 50 + 60 + 70
    assert usage["cache_creation_input_tokens"] == 200
    assert usage["cache_read_input_tokens"] == 300
    # and prices it per model: the requested model id, as the server saw it
    assert [r.matched for r in requests] == [f"model_server_write_edit#{i}" for i in (1, 2, 3)]
    model = requests[0].body["model"]
    assert "sonnet" in model and set(result["modelUsage"]) == {model}
    assert result["total_cost_usd"] > 0
    assert result["modelUsage"][model]["costUSD"] == pytest.approx(result["total_cost_usd"])
    # the real tools ran: each tool_use came back as a successful tool_result
    tools = [b for line in lines if line["type"] == "assistant"
             for b in line["message"]["content"] if b["type"] == "tool_use"]
    assert [t["name"] for t in tools] == ["Write", "Edit"]
    results = [b for line in lines if line["type"] == "user"
               for b in line["message"]["content"] if b.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [t["id"] for t in tools]
    assert not any(r.get("is_error") for r in results)
    # the requests: the task prompt first, tools offered, the tool results sent back
    first = requests[0].body
    assert first["stream"] is True and first["tools"]
    assert "MS-WRITE-EDIT" in json.dumps(first["messages"][0])
    assert "hello.py" in json.dumps(requests[1].body["messages"][-1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("status, marker", [(500, "MS-API-500"), (529, "MS-API-529")])
def test_api_errors_end_the_run_with_an_error(claude, tmp_path, status, marker):
    with ModelServer([SCRIPTS / "model_server_error.yaml"]) as server:
        run = Run(claude, server, f"{marker}: say hi", tmp_path)
        try:
            code = run.wait()
        finally:
            run.kill()
        requests = list(server.requests)

    assert code != 0, run.explain()
    result = run.lines()[-1]
    assert result["type"] == "result" and result["is_error"] is True, run.explain()
    assert result["api_error_status"] == status
    assert str(status) in result["result"]
    assert result["total_cost_usd"] == 0
    assert [r.status for r in requests] == [status]  # CLAUDE_CODE_MAX_RETRIES=0: no retry


@pytest.mark.timeout(120)
def test_a_stalled_model_keeps_the_cli_waiting_until_killed(claude, tmp_path):
    with ModelServer([SCRIPTS / "model_server_stall.yaml"]) as server:
        run = Run(claude, server, "MS-STALL: say hi", tmp_path)
        try:
            seen = server.wait_for_request(lambda r: r.matched == "model_server_stall#1",
                                           timeout=60)
            assert seen is not None, run.explain()
            assert run.proc.poll() is None, run.explain()  # still waiting for the answer
            pgid = run.proc.pid
            assert pgid in group_members(pgid)
        finally:
            run.kill()
        assert run.proc.returncode == -signal.SIGKILL
        assert wait_group_gone(pgid, timeout=10) == []
        assert not any(line["type"] == "result" for line in run.lines())


@pytest.mark.timeout(120)
def test_demo_worker_script_writes_a_module_and_passing_tests(claude, tmp_path):
    demo = Path(__file__).resolve().parents[2] / "services" / "model_server" / "scripts"
    with ModelServer([demo / "demo_worker.yaml"]) as server:
        run = Run(claude, server, "Create textkit/slug.py with slugify(text) and tests for it",
                  tmp_path)
        try:
            assert run.wait() == 0, run.explain()
        finally:
            run.kill()
        assert server.unmatched() == []
        assert len(server.requests) == 3  # turn 1 has two parallel Write calls
    result = run.lines()[-1]
    assert result["is_error"] is False, run.explain()
    # the CLI's num_turns counts one per tool result plus the final answer, not requests
    assert result["num_turns"] == 4
    assert sorted(str(p.relative_to(run.cwd)) for p in run.cwd.rglob("*.py")) == [
        "tests/test_slug.py", "textkit/__init__.py", "textkit/slug.py"]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           cwd=run.cwd, capture_output=True, text=True, timeout=60)
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr
