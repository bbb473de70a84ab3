"""The peer systems' side of benchmarks/peers.py: the same two task bodies for every system
(a no-op in the worker's process; `true` in a process of its own), and the Celery app
(its broker and result backend: the Redis server at $CCAA_BENCH_REDIS)."""

from __future__ import annotations

import os
import subprocess

from celery import Celery

app = Celery("peer_tasks", broker=os.environ.get("CCAA_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("CCAA_BENCH_REDIS", "redis://127.0.0.1:6379/0"))
app.conf.update(task_serializer="msgpack", result_serializer="msgpack",
                accept_content=["msgpack"], broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


def noop(i: int = 0) -> int:
    return i


def fork(i: int = 0) -> int:
    return subprocess.run(["true"], check=True).returncode


celery_noop = app.task(name="noop")(noop)
celery_fork = app.task(name="fork")(fork)
