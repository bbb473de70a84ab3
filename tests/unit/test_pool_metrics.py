"""ccaa_pool_agents matches the live agent processes after every scale step, stop and
restart (real processes in a real AgentPool)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from services.controller.metrics import PoolMetrics
from services.controller.pool import AgentPool

pytestmark = pytest.mark.timeout(60)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]  # wait-ok: the process under test


def test_pool_gauge_follows_every_scale_step_and_restart():
    registry = CollectorRegistry()
    metrics = PoolMetrics(registry, ["worker", "manager"])

    def gauge(role: str) -> float:
        return registry.get_sample_value("ccaa_pool_agents", {"role": role})

    async def until(cond, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)  # wait-ok: polling under a deadline

    async def main() -> None:
        pool = AgentPool(lambda slot: SLEEPER,
                         on_change=lambda event, slot: metrics.changed(event, slot, pool))
        try:
            assert gauge("worker") == 0 and gauge("manager") == 0
            pool.resize("worker", 4, "h")
            await pool.ensure()
            assert gauge("worker") == 4 and len(pool.live()) == 4
            pids = [s.proc.pid for s in pool.live()]
            pool.resize("worker", 1, "h")  # scale down: three are stopped
            await until(lambda: gauge("worker") == 1, f"gauge {gauge('worker')} after down")
            assert sum(1 for p in pids if _alive(p)) == 1
            pool.resize("worker", 2, "h")  # and up again
            await pool.ensure()
            assert gauge("worker") == 2
            # an agent dies: the gauge drops, then rises with its restart
            [first, *_] = pool.live()
            os.kill(first.proc.pid, signal.SIGKILL)
            await until(lambda: first.exits, "exit noticed")
            assert gauge("worker") == 1
            assert registry.get_sample_value("ccaa_pool_restarts_total", {"role": "worker"}) == 1
            await until(lambda: gauge("worker") == 2, "restarted")
            assert gauge("manager") == 0
        finally:
            await pool.stop()
        assert gauge("worker") == 0

    asyncio.run(main())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
