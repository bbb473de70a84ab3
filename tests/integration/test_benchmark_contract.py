"""The throughput benchmark keeps its output contract (a script checks the figures): a
small real run ends with one JSON line holding every figure the targets are read from,
and leaves no data directory behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_task_throughput_json_line_holds_every_target_figure(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))  # its data directories go here
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "task_throughput.py"), "--rounds", "1",
         "--tasks", "60", "--agents", "2", "--seq", "10", "--json"],
        capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path,
        start_new_session=True)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("noop_tasks_per_s", "noop_batch_tasks_per_s", "fork_tasks_per_s",
                "executor_alone_tasks_per_s", "seq_p50_ms"):
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, key
    assert figures["fork_vs_executor_alone"] == pytest.approx(
        figures["fork_tasks_per_s"] / figures["executor_alone_tasks_per_s"], abs=0.002)
    for workload in ("noop", "noop_batch", "fork"):
        by_kind = figures["cpu_ms_per_task"][workload]
        assert {"hub", "orchestrator", "distributor", "agents"} <= set(by_kind)
        assert by_kind["orchestrator"] > 0 and by_kind["agents"] >= 0
    # the CPU figures come in clock ticks (10 ms): 60 in-process no-ops over two agents may
    # cost less than one tick each, a process per task never does
    assert figures["cpu_ms_per_task"]["fork"]["agents"] > 0
    stages = figures["seq_stages_ms"]  # where the sequential latency goes, step by step
    assert list(stages) == ["session created", "queued", "agent started it", "result applied",
                            "session ended", "client saw the end"], stages
    assert 0 < stages["session created"] <= stages["queued"] <= stages["result applied"] \
        <= stages["session ended"] <= stages["client saw the end"], stages
    assert "target fork >= 90% of executor alone" in out.stdout  # target beside its figure
    assert not list(tmp_path.glob("ccaa-bench-*")), "the benchmark left its data behind"


@pytest.mark.timeout(120)
def test_orchestrator_cost_prints_its_figures_as_one_json_line(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "orchestrator_cost.py"), "--sessions", "60",
         "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=110, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["us_per_session"] > 0 and figures["statements"] > 10, figures
    assert 0 < figures["commits"] < 1, figures  # a turn's writes commit together
    assert "us CPU per session" in out.stdout
    assert not list(tmp_path.glob("ccaa-orch-cost-*")), "the benchmark left its data behind"
