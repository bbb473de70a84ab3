"""The no-op task body of ccaa's agents in the benchmarks (the python executor's callable):
a coroutine function, so it runs on the agent's own loop, as a Celery prefork child and
an ipyparallel engine run theirs inline. (A plain function such as ``builtins:len`` runs
in a worker thread, which keeps a long call from stopping the agent's heartbeats: one
thread hop more per task.)"""

from __future__ import annotations


async def noop(prompt: str) -> None:
    return None
