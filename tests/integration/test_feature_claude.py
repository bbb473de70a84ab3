"""IMPLEMENT_FEATURE with real Claude Code agents against the scripted model server: the
architect plans three subtasks (two independent, one dependent), workers run the two in
parallel, a failing test gate sends one back, its (resumed) fix passes, branches merge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from services.cli import sample_repo
from services.model_server.server import ModelServer
from tests.integration.test_bus_flow import session_state, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "model_scripts" / "feature_gate.yaml"


@pytest.mark.bus(heartbeat=0.5, liveness=6)
@pytest.mark.timeout(240)
def test_feature_with_a_failing_gate_sent_back_and_fixed(procs, bus, tmp_path):
    repo = tmp_path / "calc"
    base = sample_repo.create(repo)
    with ModelServer([SCRIPT]) as model:
        args = bus.args()
        for role in ("architect", "manager", "worker"):
            args += ["--set", f'agent_hierarchy.{role}.executor="claude"']
        args += ["--set", 'agent_hierarchy.worker.allowed_tools=["Read", "Write", "Edit"]']
        for m in ("services.commands", "services.orchestrator", "services.distributor"):
            procs.ready(procs.service(m, *args))
        env = {"CCAA_MODEL_BASE_URL": model.url}
        for role, name in (("architect", "arch"), ("manager", "mgr"), ("worker", "w1"),
                           ("worker", "w2"), ("utility", "util")):
            procs.ready(procs.start(name, [sys.executable, "-m", "services.agent", *args,
                                           "--role", role, "--name", name], env=env))

        async def go():
            async with BusClient(bus.comm()) as client:
                acc = await client.request("commands", CommandSubmit(
                    text="Add multiply and divide", repo=str(repo),
                    type=CommandType.IMPLEMENT_FEATURE))
                sid = acc.body.session_id

                async def done():
                    st = await session_state(client, sid)
                    return st if st.session.state.value != "running" else None

                return await wait_for(done, 200, "the session", interval=0.2)

        status = asyncio.run(go())
        requests = model.messages()

    st = status.session
    assert st.state.value == "succeeded", (st.detail, [(t.kind, t.key, t.state.value)
                                                       for t in status.tasks])
    work = {t.key: t for t in status.tasks if t.kind == "work"}
    assert set(work) == {"multiply", "divide", "exports"}
    # the two independent subtasks ran at the same time on the two workers
    history = status.history

    def at(task_id, state):
        return next(h["ts"] for h in history if h["task_id"] == task_id and h["to_state"] == state)

    m, d = work["multiply"], work["divide"]
    assert at(m.task_id, "running") < at(d.task_id, "succeeded")
    assert at(d.task_id, "running") < at(m.task_id, "succeeded")
    assert {m.agent_id, d.agent_id} <= {"w1", "w2"}
    # divide: the gate failed, it went back with the gate's output, the fix passed
    gates = [t for t in status.tasks if t.kind == "gate" and t.key == "divide:tests"]
    assert [g.state.value for g in gates] == ["failed", "succeeded"]
    assert "must not be zero" in gates[0].result["stdout"]
    assert d.attempt == 2 and d.meta["rounds"] == 1
    assert any("quality gate tests failed" in f for f in d.meta["feedback"])
    # the second attempt resumed the first attempt's Claude session
    first_session = d.meta["resume_session"]
    assert first_session and d.result["data"]["session_id"] == first_session
    feedback_requests = [r for r in requests if "FEEDBACK" in str(r.body["messages"][-1])]
    assert feedback_requests and len(feedback_requests[0].body["messages"]) > 2
    # dependent subtask started from both, all merged, final gate on the result passed
    branch = st.report["branch"]

    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                              check=True).stdout

    assert "raise ZeroDivisionError" in git("show", f"{branch}:calc/divide.py")
    assert "from calc.divide import divide" in git("show", f"{branch}:calc/__init__.py")
    assert git("merge-base", "--is-ancestor", base, branch) == ""
    assert [g["state"] for g in st.report["gates"] if g["kind"] == "final_gate"] == ["succeeded"]
    assert st.cost_usd > 0 and st.report["tokens"]["input_tokens"] > 0
