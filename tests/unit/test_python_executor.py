"""The python executor calls a named function in the agent's process: its return value is
the output, its exception the failure; a bad reference is a configuration error at start."""

from __future__ import annotations

import asyncio
import threading

import pytest

from libs.config import ConfigError, SystemConfig
from protocols.task import Outcome, TaskSpec
from services.agent.executors.base import RunContext
from services.agent.executors.factory import executor_factory
from services.agent.executors.python import CallableError, PythonExecutor, resolve

pytestmark = pytest.mark.timeout(30)


def ctx_for(prompt: str) -> RunContext:
    spec = TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt=prompt)
    return RunContext(spec=spec, agent_id="agent-1", progress=lambda *a: None)


def shout(text: str) -> str:
    return text.upper()


def explode(text: str) -> None:
    raise RuntimeError(f"cannot do {text}")


async def slow(text: str) -> str:
    await asyncio.sleep(30)  # wait-ok: cancelled by the test
    return text


def test_return_value_is_the_output():
    ctx = ctx_for("hello")
    result = asyncio.run(PythonExecutor(shout).run(ctx))
    assert result.outcome == Outcome.SUCCEEDED
    assert ctx.stdout.text() == "HELLO"


def test_plain_function_runs_off_the_loop():
    seen = []
    ex = PythonExecutor(lambda text: seen.append(threading.current_thread().name))
    ctx = ctx_for("x")
    assert asyncio.run(ex.run(ctx)).outcome == Outcome.SUCCEEDED
    assert seen and seen[0] != threading.main_thread().name
    assert ctx.stdout.text() == ""  # None: no output


def test_exception_fails_the_attempt_with_its_traceback():
    ctx = ctx_for("the thing")
    result = asyncio.run(PythonExecutor(explode).run(ctx))
    assert result.outcome == Outcome.FAILED
    assert result.error == "RuntimeError: cannot do the thing"
    assert "Traceback" in ctx.stderr.text() and "explode" in ctx.stderr.text()


def test_coroutine_function_is_cancellable():
    async def go():
        task = asyncio.create_task(PythonExecutor(slow).run(ctx_for("x")))
        await asyncio.sleep(0.05)  # wait-ok: let it start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    asyncio.run(go())


@pytest.mark.parametrize("ref, why", [
    ("json", "not of the form"),
    ("no_such_module_x:f", "cannot import"),
    ("json:no_such", "has no 'no_such'"),
    ("json:__doc__", "not a function"),
])
def test_bad_references(ref, why):
    with pytest.raises(CallableError, match=why):
        resolve(ref)


def test_dotted_attribute_path():
    assert resolve("os.path:join")("a", "b") == "a/b"


def test_factory_builds_it_and_rejects_bad_config_at_start():
    config = SystemConfig()
    config.agent_hierarchy["worker"].executor = "python"
    config.agent_hierarchy["worker"].callable = f"{__name__}:shout"
    make = executor_factory(config, "worker")
    ex = make(TaskSpec(task_id="t", attempt_id="a", session_id="s", prompt="p"))
    assert isinstance(ex, PythonExecutor) and ex.function is shout

    config.agent_hierarchy["worker"].callable = ""
    with pytest.raises(ConfigError, match="needs `callable`"):
        executor_factory(config, "worker")
    config.agent_hierarchy["worker"].callable = "no_such_module_x:f"
    with pytest.raises(ConfigError, match="role 'worker': callable"):
        executor_factory(config, "worker")
