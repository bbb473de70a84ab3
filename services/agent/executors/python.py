"""The ``python`` executor: a Python callable, run inside the agent's own process.

The role names it as ``"package.module:function"`` (``callable`` in its configuration).
It is called with the task's prompt (one string); what it returns becomes the attempt's
output (``str()`` of it, nothing for ``None``), and an exception fails the attempt with
its traceback as the error output. No process is started, no worktree is made: this is
for short work that is already Python (a data step, a check, a call into a library) and
for the throughput benchmark's no-op tasks.

A coroutine function is awaited on the agent's loop, so a timeout or ``task.cancel``
stops it at its next ``await``. A plain function runs in a worker thread so the agent
keeps heartbeating; Python cannot stop a thread, so on timeout or cancel the attempt ends
at once and the thread's eventual return value is dropped.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import traceback
from typing import Any, Callable

from protocols.task import Outcome
from services.agent.executors.base import ExecutionResult, RunContext


class CallableError(ValueError):
    """A ``module:function`` reference that does not name a callable."""


def resolve(reference: str) -> Callable[[str], Any]:
    """The callable ``reference`` ("package.module:attr.path") names."""
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise CallableError(f"callable {reference!r} is not of the form "
                            "'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CallableError(f"callable {reference!r}: cannot import {module_name!r} "
                            f"({exc})") from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CallableError(f"callable {reference!r}: {module_name!r} has no "
                                f"{attr_path!r}") from None
    if not callable(target):
        raise CallableError(f"callable {reference!r} names a {type(target).__name__}, "
                            "not a function")
    return target


class PythonExecutor:
    name = "python"

    def __init__(self, function: Callable[[str], Any]):
        self.function = function
        self.is_async = inspect.iscoroutinefunction(function)

    async def run(self, ctx: RunContext) -> ExecutionResult:
        try:
            if self.is_async:
                value = await self.function(ctx.spec.prompt)
            else:
                value = await asyncio.to_thread(self.function, ctx.spec.prompt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the callable's own failure is the attempt's result
            ctx.stderr.add("".join(traceback.format_exception(exc)))
            return ExecutionResult(Outcome.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        if value is not None:
            ctx.stdout.add(str(value))
        return ExecutionResult(Outcome.SUCCEEDED)
