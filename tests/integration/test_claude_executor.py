"""The claude executor with the REAL Claude Code CLI against the scripted model server.

Each test costs one or two real `claude` runs (~2 s, ~200 MB each). Processes are checked
with psutil: after a timeout or a cancel no descendant of this test process may be left,
nor any process carrying the test's marker (a grandchild re-parented after its shell
exited); whatever is found is killed by pid in teardown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from libs.config import RoleConfig
from protocols.task import Outcome, TaskSpec
from services.agent.executors.base import RunContext
from services.agent.executors.claude import (
    RUN_COOKIE_ENV,
    ClaudeExecutor,
    ProcessTree,
    resolve_cli,
)

pytestmark = [pytest.mark.claude]

SCRIPTS = Path(__file__).resolve().parents[1] / "model_scripts"


def _server_class() -> Any:
    try:
        from services.model_server.server import ModelServer
    except ImportError as exc:  # written by another engineer; say so clearly
        pytest.fail(f"services.model_server.server.ModelServer is not available: {exc}")
    return ModelServer


def git(path: Path | str, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def live_descendants() -> list[psutil.Process]:
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def marked(marker: str) -> list[psutil.Process]:
    """Processes anywhere whose command line carries ``marker``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE \
                    and any(marker in arg for arg in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def kill_pids(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)  # wait-ok: polling a condition under a deadline


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("sample\n")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return path


@pytest.fixture
def server() -> Iterator[Any]:
    cls = _server_class()
    srv = cls(scripts=sorted(str(p) for p in SCRIPTS.glob("executor_*.yaml")))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def no_leftovers() -> Iterator[Any]:
    """``leftovers()``: live descendants started since the test began (the model server,
    started before, is not one). Teardown fails the test if any process it started
    survives (a descendant or a marked one) and kills those by pid."""
    before = {p.pid for p in live_descendants()}

    def leftovers() -> list[psutil.Process]:
        return [p for p in live_descendants() if p.pid not in before]

    yield leftovers
    left = leftovers() + marked("ccaa-exec-")
    kill_pids(left)
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def make_executor(server: Any, tmp_path: Path, **role: Any) -> ClaudeExecutor:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "offline",
           "HOME": str(home), "CLAUDE_CODE_MAX_RETRIES": "0"}
    role.setdefault("permission_mode", "acceptEdits")
    role.setdefault("max_turns", 6)  # a script that loops fails fast
    return ClaudeExecutor(RoleConfig(executor="claude", **role), env=env,
                          worktree_root=str(tmp_path / "worktrees"))


def make_ctx(repo: Path, prompt: str, task_id: str = "t1", timeout: float = 60,
             isolate: bool = True) -> tuple[RunContext, list[tuple[str, str, dict]]]:
    events: list[tuple[str, str, dict]] = []
    spec = TaskSpec(task_id=task_id, attempt_id=f"{task_id}-a1", session_id="sess1",
                    prompt=prompt, cwd=str(repo), timeout_s=timeout, isolate=isolate,
                    base_commit=git(repo, "rev-parse", "HEAD"))
    ctx = RunContext(spec=spec, agent_id="agent-test",
                     progress=lambda kind, summary, data: events.append((kind, summary, data)))
    return ctx, events


def test_cli_resolution():
    assert os.access(resolve_cli(None), os.X_OK)
    with pytest.raises(FileNotFoundError, match="not an executable file"):
        resolve_cli("/nonexistent/claude")


@pytest.mark.timeout(30)
def test_process_tree_stop_kills_descendants_their_groups_and_cookie_carriers(no_leftovers):
    """The kill mechanism alone, on a shell instead of claude: a child in the shell's
    group, a grandchild in a session of its own that is re-parented at once (found only
    by the cookie), and the shell itself, which ignores SIGTERM."""
    sleeper = "python3 -c 'import time; time.sleep(300)' ${M}marker"  # wait-ok: the process under test (not in bash's argv)
    script = (f"M=ccaa-exec-tree-; trap '' TERM; setsid sh -c \"({sleeper} &)\"; {sleeper} & "
              "echo ready; wait")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE,
                            env=dict(os.environ, **{RUN_COOKIE_ENV: "cookie-1"}))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"

        async def scenario() -> list[int]:
            await wait_until(lambda: len(marked("ccaa-exec-tree-marker")) == 2, 10, "sleepers")
            tree = ProcessTree("cookie-1")
            tree.set_root(proc.pid)
            orphans = [p for p in marked("ccaa-exec-tree-marker") if p.ppid() != proc.pid]
            assert len(orphans) == 1 and orphans[0].pid not in tree.known  # cookie only
            return await tree.stop(grace=0.5)

        assert asyncio.run(scenario()) == []
        assert proc.wait(5) == -signal.SIGKILL  # SIGTERM was ignored: killed after the grace
        assert not marked("ccaa-exec-tree-marker")
    finally:
        kill_pids([psutil.Process(proc.pid)] if proc.poll() is None else [])
        proc.wait(5)


@pytest.mark.timeout(90)
def test_write_then_edit_commits_on_the_task_branch(server, repo, tmp_path, no_leftovers):
    executor = make_executor(server, tmp_path)
    ctx, events = make_ctx(repo, "EXEC-WRITE-EDIT: create greeting.txt, then edit it")
    result = asyncio.run(asyncio.wait_for(executor.run(ctx), 60))
    data = ctx.data
    assert result.outcome is Outcome.SUCCEEDED, (result, data, ctx.stderr.text())
    assert data["is_error"] is False and data["subtype"] == "success"
    assert data["result"] == "greeting.txt now says goodbye."

    # the work is committed on ccaa/<session>/<task>; the base repo is untouched
    assert data["branch"] == "ccaa/sess1/t1"
    assert git(repo, "rev-parse", "ccaa/sess1/t1") == data["commit"]
    assert git(repo, "show", "ccaa/sess1/t1:greeting.txt") == "goodbye from the agent"
    assert git(repo, "log", "-1", "--format=%ae", "ccaa/sess1/t1") == "agent@ccaa.local"
    assert Path(data["worktree"]).is_dir() and not (repo / "greeting.txt").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--show-current") == "main"
    assert data["files_changed"] == ["greeting.txt"] and "greeting.txt" in data["diff_stat"]

    # tokens are the scripted usage summed over the three turns; cost follows from them
    assert data["num_turns"] == 3 and data["session_id"]
    assert data["usage"]["input_tokens"] == 1200 + 1500 + 1700
    assert data["usage"]["output_tokens"] == 80 + 60 + 40
    (model, per_model), = data["model_usage"].items()
    assert per_model["inputTokens"] == 4400 and per_model["outputTokens"] == 180
    assert data["total_cost_usd"] > 0
    assert data["total_cost_usd"] == pytest.approx(per_model["costUSD"])

    tool_uses = [summary for kind, summary, _ in events if kind == "tool_use"]
    assert tool_uses == ["Write: greeting.txt", "Edit: greeting.txt"]
    assert ("text", "Creating greeting.txt.") in [(k, s) for k, s, _ in events]
    assert not no_leftovers()


@pytest.mark.timeout(60)
def test_a_stalled_model_is_timed_out_and_the_process_tree_killed(server, repo, tmp_path,
                                                                  no_leftovers):
    executor = make_executor(server, tmp_path, allowed_tools=["Bash"])
    ctx, events = make_ctx(repo, "EXEC-STALL: start a helper, then wait")

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(executor.run(ctx), 8)
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert elapsed < 8 + 6, f"cleanup after the timeout took {elapsed - 8:.1f}s"
    assert not no_leftovers(), "a claude process survived the timeout"
    assert not marked("ccaa-exec-stall-marker"), "the shell's helper survived the timeout"
    # partial progress is kept for the report
    assert ctx.data["session_id"] and ctx.data["num_turns"] >= 1
    assert [s for k, s, _ in events if k == "tool_use"][0].startswith("Bash: (python3")
    assert "is_error" not in ctx.data  # no result arrived


@pytest.mark.timeout(60)
def test_cancelling_the_run_leaves_no_process(server, repo, tmp_path, no_leftovers):
    executor = make_executor(server, tmp_path, allowed_tools=["Bash"])
    ctx, _ = make_ctx(repo, "EXEC-CANCEL: work until cancelled", isolate=False)

    async def scenario() -> None:
        task = asyncio.ensure_future(executor.run(ctx))
        # cancel while the tool is running: its process exists
        await wait_until(lambda: marked("ccaa-exec-cancel-marker") or task.done(), 40,
                         "the Bash tool's process")
        assert not task.done(), task.result()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert not no_leftovers(), "a claude process survived the cancel"
    assert not marked("ccaa-exec-cancel-marker")
    assert ctx.data["session_id"] and ctx.data["tool_uses"] == 1


@pytest.mark.timeout(60)
def test_an_api_error_fails_with_the_error(server, repo, tmp_path, no_leftovers):
    executor = make_executor(server, tmp_path)
    ctx, _ = make_ctx(repo, "EXEC-API-ERROR: this will fail")
    result = asyncio.run(asyncio.wait_for(executor.run(ctx), 40))
    assert result.outcome is Outcome.FAILED
    assert "500" in result.error and "scripted upstream failure" in result.error
    assert ctx.data["is_error"] is True
    assert ctx.data["committed"] is False and ctx.data["files_changed"] == []
    assert not no_leftovers()


@pytest.mark.timeout(90)
def test_two_tasks_run_concurrently_in_separate_worktrees(server, repo, tmp_path,
                                                          no_leftovers):
    first, second = make_executor(server, tmp_path), make_executor(server, tmp_path)
    ctx_a, _ = make_ctx(repo, "EXEC-PARALLEL-ALPHA: write alpha.txt", task_id="alpha")
    ctx_b, _ = make_ctx(repo, "EXEC-PARALLEL-BETA: write beta.txt", task_id="beta")

    async def both() -> list:
        return await asyncio.wait_for(asyncio.gather(first.run(ctx_a), second.run(ctx_b)), 60)

    results = asyncio.run(both())
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 2, \
        (results, ctx_a.data, ctx_b.data)
    assert ctx_a.data["worktree"] != ctx_b.data["worktree"]
    assert ctx_a.data["session_id"] != ctx_b.data["session_id"]
    for ctx, mine, other in ((ctx_a, "alpha", "beta"), (ctx_b, "beta", "alpha")):
        branch = f"ccaa/sess1/{mine}"
        assert ctx.data["branch"] == branch and ctx.data["files_changed"] == [f"{mine}.txt"]
        files = git(repo, "ls-tree", "--name-only", branch).split()
        assert sorted(files) == ["README.md", f"{mine}.txt"]
        assert git(repo, "show", f"{branch}:{mine}.txt") == mine
        assert ctx.data["result"] == f"{mine} written"
        assert not (Path(ctx.data["worktree"]) / f"{other}.txt").exists()
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.timeout(60)
def test_refused_credentials_fail_as_an_auth_failure_that_says_what_to_do(server, repo,
                                                                            tmp_path,
                                                                            no_leftovers):
    executor = make_executor(server, tmp_path)
    ctx, _ = make_ctx(repo, "EXEC-AUTH-ERROR: this will be refused")
    result = asyncio.run(asyncio.wait_for(executor.run(ctx), 40))
    assert result.outcome is Outcome.FAILED
    assert ctx.data["auth_failed"] is True
    assert "could not authenticate on agent agent-test" in result.error
    assert "ANTHROPIC_API_KEY" in result.error and "ccaa claude login" in result.error
    assert not no_leftovers()


@pytest.mark.timeout(60)
def test_auth_status_asks_the_cli_itself(tmp_path):
    from services.agent.executors.claude import resolve_cli
    from services.agent.executors.claude_auth import auth_status

    cli = resolve_cli()
    home = tmp_path / "home"
    home.mkdir()
    bare = {"PATH": os.environ["PATH"], "HOME": str(home)}
    missing = auth_status(cli, bare)
    assert not missing.ok and "ccaa claude login" in missing.detail
    keyed = auth_status(cli, {**bare, "ANTHROPIC_API_KEY": "sk-test"})
    assert keyed.ok and keyed.method == "api_key" and "ANTHROPIC_API_KEY" in keyed.detail


@pytest.mark.timeout(90)
def test_a_run_that_ended_as_it_was_cancelled_keeps_its_result_and_its_commit(
        server, repo, tmp_path, no_leftovers, monkeypatch):
    # the run is done and its work is being committed (a large worktree, a branch sent
    # back over the bus) when its agent stops: the paid-for result stands, with its
    # commit, instead of being run again as an interrupted attempt
    from services.agent import isolation

    executor = make_executor(server, tmp_path)
    ctx, _ = make_ctx(repo, "EXEC-WRITE-EDIT: create greeting.txt, then edit it")
    real_finish = isolation.finish

    async def scenario() -> None:
        finishing, go_on = asyncio.Event(), asyncio.Event()

        async def slow_finish(*args: Any) -> None:
            finishing.set()
            await go_on.wait()
            await real_finish(*args)

        monkeypatch.setattr(isolation, "finish", slow_finish)
        task = asyncio.ensure_future(executor.run(ctx))
        await asyncio.wait_for(finishing.wait(), 60)
        task.cancel()  # delivered while the commit waits: it goes on, shielded
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert ctx.finished is not None and ctx.finished.outcome is Outcome.SUCCEEDED, ctx.finished
    assert ctx.data["result"] == "greeting.txt now says goodbye."
    assert git(repo, "rev-parse", "ccaa/sess1/t1") == ctx.data["commit"]
    assert "partial work" not in git(repo, "log", "-1", "--format=%B", "ccaa/sess1/t1")
    assert git(repo, "show", "ccaa/sess1/t1:greeting.txt") == "goodbye from the agent"
    assert not no_leftovers()
