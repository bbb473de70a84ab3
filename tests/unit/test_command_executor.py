"""The command executor runs real processes: output tails, exit codes, and the whole
process group stopped on timeout and cancel."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import psutil
import pytest

from protocols.task import Outcome, TaskSpec
from services.agent.executors.base import TAIL_CHARS, RunContext, Tail
from services.agent.executors.command import CommandExecutor, render

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def make_ctx(prompt: str, cwd: str = "") -> tuple[RunContext, list[tuple[str, str, dict]]]:
    events: list[tuple[str, str, dict]] = []
    spec = TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt=prompt, cwd=cwd)
    ctx = RunContext(spec=spec, agent_id="agent-1",
                     progress=lambda kind, summary, data: events.append((kind, summary, data)))
    return ctx, events


def _alive(pid: int) -> bool:
    """Running (a zombie has exited; it only waits to be reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


async def _wait_gone(pgid: int, pids: list[int], within: float = 5.0) -> None:
    """SIGKILL is delivered asynchronously: give the kernel a bounded moment to finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while _group_members(pgid) or any(_alive(p) for p in pids):
        if loop.time() > deadline:
            raise AssertionError(f"still alive in group {pgid}: {_group_members(pgid)}; "
                                 f"pids {[p for p in pids if _alive(p)]}")
        await asyncio.sleep(0.05)  # wait-ok: polling the process table under a deadline


def _pids(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"PID=(\d+)", text)]


def test_render_substitutes_prompt_and_cwd_in_every_argument():
    assert render(["x", "{prompt}", "--dir={cwd}", "{prompt}{cwd}"], "p q", "/w") == [
        "x", "p q", "--dir=/w", "p q/w"]


def test_empty_template_is_refused():
    with pytest.raises(ValueError):
        CommandExecutor([])


def test_runs_template_in_cwd_and_captures_stdout_stderr_and_exit_code(tmp_path):
    ex = CommandExecutor(["bash", "-c", "{prompt}", "ignored-argv0", "{cwd}"])
    ctx, events = make_ctx('echo "out:$(pwd)"; echo "arg:$1"; echo oops >&2', str(tmp_path))

    result = asyncio.run(ex.run(ctx))

    assert result.outcome == Outcome.SUCCEEDED and result.exit_code == 0
    assert result.error == ""
    out = ctx.stdout.text()
    assert f"out:{tmp_path}" in out and f"arg:{tmp_path}" in out
    assert ctx.stderr.text() == "oops\n"
    assert ctx.pgid is not None
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "started" and events[0][2]["pid"] == ctx.pgid
    assert "output" in kinds


def test_prompt_is_passed_as_one_argument_without_shell_interpretation(tmp_path):
    ex = CommandExecutor(["printf", "[%s]", "{prompt}"])
    ctx, _ = make_ctx("a b; echo $HOME `x`", str(tmp_path))
    result = asyncio.run(ex.run(ctx))
    assert result.outcome == Outcome.SUCCEEDED
    assert ctx.stdout.text() == "[a b; echo $HOME `x`]"


def test_nonzero_exit_fails_with_the_code(tmp_path):
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, _ = make_ctx("echo partial; echo bad >&2; exit 3", str(tmp_path))
    result = asyncio.run(ex.run(ctx))
    assert result.outcome == Outcome.FAILED
    assert result.exit_code == 3 and result.error == "exit code 3"
    assert ctx.stdout.text() == "partial\n" and ctx.stderr.text() == "bad\n"


def test_killed_by_a_signal_is_a_failure(tmp_path):
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, _ = make_ctx("kill -9 $$", str(tmp_path))
    result = asyncio.run(ex.run(ctx))
    assert result.outcome == Outcome.FAILED and result.exit_code == -9


def test_missing_cwd_fails_clearly(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, events = make_ctx("echo hi", str(missing))
    result = asyncio.run(ex.run(ctx))
    assert result.outcome == Outcome.FAILED and result.exit_code is None
    assert str(missing) in result.error and "does not exist" in result.error
    assert events == [] and ctx.pgid is None


def test_missing_binary_fails_clearly(tmp_path):
    ex = CommandExecutor(["definitely-not-a-real-binary-ccaa", "{prompt}"])
    ctx, _ = make_ctx("hi", str(tmp_path))
    result = asyncio.run(ex.run(ctx))
    assert result.outcome == Outcome.FAILED and result.exit_code is None
    assert "definitely-not-a-real-binary-ccaa" in result.error
    assert "cannot start" in result.error


def test_empty_cwd_runs_in_the_current_directory():
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, _ = make_ctx("pwd", "")
    assert asyncio.run(ex.run(ctx)).outcome == Outcome.SUCCEEDED
    assert Path(ctx.stdout.text().strip()).resolve() == Path.cwd().resolve()


def test_env_is_passed_to_the_command(tmp_path):
    ex = CommandExecutor(["bash", "-c", "{prompt}"], env={"PATH": os.environ["PATH"],
                                                          "CCAA_TEST_VALUE": "xyz"})
    ctx, _ = make_ctx('echo "v=$CCAA_TEST_VALUE"', str(tmp_path))
    asyncio.run(ex.run(ctx))
    assert ctx.stdout.text() == "v=xyz\n"


def test_output_keeps_only_the_tail(tmp_path):
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    n = TAIL_CHARS * 3
    ctx, _ = make_ctx(f"head -c {n} /dev/zero | tr '\\0' a; printf END", str(tmp_path))
    assert asyncio.run(ex.run(ctx)).outcome == Outcome.SUCCEEDED
    text = ctx.stdout.text()
    assert len(text) == TAIL_CHARS and text.endswith("aaaEND")
    assert ctx.stdout.total == n + 3


def test_tail_unit():
    t = Tail(limit=5)
    assert t.text() == ""
    for chunk in ("ab", "cd", "efgh", "ij", "klmnopqrstuv"):
        t.add(chunk)
    assert t.text() == "rstuv" and t.total == 22


def test_background_leftovers_are_killed_after_a_normal_exit(tmp_path):
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        ctx, _ = make_ctx("sleep 60 >/dev/null 2>&1 & echo PID=$!", str(tmp_path))
        result = await ex.run(ctx)
        assert result.outcome == Outcome.SUCCEEDED
        [pid] = _pids(ctx.stdout.text())
        await _wait_gone(ctx.pgid, [pid])
    asyncio.run(go())


def test_a_child_left_holding_the_output_does_not_keep_the_command_running(tmp_path):
    # a server started in the background keeps the pipes open: the command's own exit
    # ends the attempt; what it printed is kept; the child dies with its group
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        ctx, _ = make_ctx("sleep 60 & echo PID=$!; echo done", str(tmp_path))
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await asyncio.wait_for(ex.run(ctx), 20)
        assert loop.time() - started < 10
        assert (result.outcome, result.exit_code) == (Outcome.SUCCEEDED, 0)
        assert "done" in ctx.stdout.text()
        await _wait_gone(ctx.pgid, _pids(ctx.stdout.text()))
    asyncio.run(go())


def test_a_process_outside_the_group_holding_the_output_is_not_waited_for(tmp_path):
    # one that left the group (setsid) cannot be killed with it: the attempt still ends
    # (its agent's controller sweeps such leftovers by the agent's token)
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        ctx, _ = make_ctx("setsid sleep 60 & echo PID=$!; echo done; exit 3", str(tmp_path))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            result = await asyncio.wait_for(ex.run(ctx), 20)
            assert loop.time() - started < 10
            assert (result.outcome, result.exit_code) == (Outcome.FAILED, 3)
            assert "done" in ctx.stdout.text()
        finally:
            for pid in _pids(ctx.stdout.text()):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
    asyncio.run(go())


def test_timeout_stops_the_whole_process_group(tmp_path):
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        # the background grandchild keeps the pipes open: only killing the group ends it
        ctx, _ = make_ctx("sleep 60 & echo PID=$!; echo PID=$$; sleep 60", str(tmp_path))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ex.run(ctx), 1.0)
        assert loop.time() - started < 10
        assert ctx.pgid is not None
        pids = _pids(ctx.stdout.text())
        assert len(pids) == 2, ctx.stdout.text()  # partial output survives the timeout
        await _wait_gone(ctx.pgid, pids)
    asyncio.run(go())


def test_cancel_stops_the_whole_process_group(tmp_path):
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        ctx, events = make_ctx("sleep 60 & echo PID=$!; echo PID=$$; sleep 60", str(tmp_path))
        seen = asyncio.Event()
        inner = ctx.progress

        def progress(kind, summary, data):
            inner(kind, summary, data)
            if len(_pids(ctx.stdout.text())) == 2:
                seen.set()

        ctx.progress = progress
        task = asyncio.ensure_future(ex.run(ctx))
        await asyncio.wait_for(seen.wait(), 20)
        pids = _pids(ctx.stdout.text())
        assert all(_alive(p) for p in pids)
        assert sorted(_group_members(ctx.pgid)) == sorted(set(pids) | {ctx.pgid})
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _wait_gone(ctx.pgid, pids)
    asyncio.run(go())


def test_a_process_ignoring_sigterm_is_killed(tmp_path):
    async def go():
        ex = CommandExecutor(["bash", "-c", "{prompt}"])
        ctx, _ = make_ctx("trap '' TERM; echo PID=$$; while :; do sleep 0.1; done",
                          str(tmp_path))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ex.run(ctx), 1.0)
        await _wait_gone(ctx.pgid, _pids(ctx.stdout.text()))
    asyncio.run(go())


def test_a_json_result_line_reports_cost_and_usage(tmp_path):
    """A command that ends like `claude -p --output-format json` has its cost counted."""
    line = ('{"type": "result", "result": "the answer", "total_cost_usd": 0.042, '
            '"usage": {"input_tokens": 10}, '
            '"modelUsage": {"m-1": {"inputTokens": 10, "outputTokens": 3, "costUSD": 0.042}}}')
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, _ = make_ctx(f"echo working; echo '{line}'", str(tmp_path))
    assert asyncio.run(ex.run(ctx)).outcome == Outcome.SUCCEEDED
    assert ctx.data["total_cost_usd"] == pytest.approx(0.042)
    assert ctx.data["model_usage"]["m-1"]["outputTokens"] == 3
    assert ctx.data["usage"] == {"input_tokens": 10}
    assert ctx.data["result"] == "the answer"  # what the orchestrator reads as the answer


@pytest.mark.parametrize("last", ['{"total_cost_usd": 5}', '{"type": "result", '
                                  '"total_cost_usd": "lots"}', "[1, 2]", "done"])
def test_output_that_is_not_a_result_line_reports_nothing(tmp_path, last):
    ex = CommandExecutor(["bash", "-c", "{prompt}"])
    ctx, _ = make_ctx(f"echo '{last}'", str(tmp_path))
    asyncio.run(ex.run(ctx))
    assert "total_cost_usd" not in ctx.data and "model_usage" not in ctx.data


def test_children_watched_by_pidfd_run_commands_without_a_thread_each(tmp_path):
    """With pidfds watching children (as every agent does), commands still end with their
    exit codes, and running many starts no thread per child."""
    import subprocess
    import sys

    script = (
        "import asyncio, sys, threading\n"
        "from services.agent.executors.base import watch_children_by_pidfd\n"
        "used = watch_children_by_pidfd()\n"
        "async def main():\n"
        "    codes = []\n"
        "    most = threading.active_count()\n"
        "    for code in (0, 3) * 10:\n"
        "        p = await asyncio.create_subprocess_exec('sh', '-c', f'exit {code}')\n"
        "        codes.append(await p.wait())\n"
        "        most = max(most, threading.active_count())\n"
        "    return codes, most\n"
        "codes, most = asyncio.run(main())\n"
        "print(used, type(asyncio.get_child_watcher()).__name__ if used else '-', "
        "codes.count(0), codes.count(3), most)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=30)
    assert out.returncode == 0, out.stderr
    used, watcher, zeros, threes, threads = out.stdout.split()
    assert (zeros, threes) == ("10", "10")
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        assert (used, watcher) == ("True", "PidfdChildWatcher")
        assert int(threads) <= 2  # the main thread (and at most one other), none per child


def test_task_environment_keeps_the_baseline_and_passthrough_only():
    from services.agent.executors.environment import task_env

    environ = {"PATH": "/bin", "LC_ALL": "C", "NPM_TOKEN": "n", "AWS_SECRET": "s",
               "PATHOLOGY": "no", "lc_all": "lower", "HOME": "/h"}
    assert task_env((), environ) == {"PATH": "/bin", "LC_ALL": "C", "HOME": "/h"}
    assert task_env(("NPM_*",), environ) == {"PATH": "/bin", "LC_ALL": "C", "HOME": "/h",
                                            "NPM_TOKEN": "n"}
