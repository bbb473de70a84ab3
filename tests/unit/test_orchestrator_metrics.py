"""The orchestrator's metrics say what happened: durations by role and kind, gate and
review outcomes, cost and tokens by role and model, counts by state from the database;
every series an operator's increase() needs exists before its first event."""

from __future__ import annotations

import pytest

from protocols.command import CommandSubmit, CommandType, SessionCreate
from protocols.task import Outcome
from tests.unit.orchestrator_world import World, scenario
from tests.unit.test_workflow_limits import finish, make_repo, plan_text, run_until_done, \
    start, world_config

pytestmark = pytest.mark.timeout(60)


def test_series_exist_at_zero_before_any_event(tmp_path):
    async def go(w: World):
        for state in ("succeeded", "partial", "failed", "cancelled"):
            assert w.registry.get_sample_value("ccaa_sessions_finished_total",
                                               {"state": state}) == 0
        assert w.registry.get_sample_value("ccaa_reviews_total", {"verdict": "approve"}) == 0
        for gate in w.config.gates:
            assert w.registry.get_sample_value(
                "ccaa_gate_results_total", {"gate": gate, "result": "failed"}) == 0
        assert w.registry.get_sample_value(
            "ccaa_task_duration_seconds_count",
            {"role": "worker", "kind": "work", "state": "succeeded"}) == 0
        # counted in the database at scrape time: zero for every state to begin with
        assert w.registry.get_sample_value("ccaa_sessions", {"state": "running"}) == 0
        assert w.registry.get_sample_value("ccaa_tasks", {"state": "queued"}) == 0
    scenario(tmp_path, go)


def test_durations_cost_and_tokens_by_role_kind_and_model(tmp_path):
    async def go(w: World):
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=CommandSubmit(text="run it", repo=w.repo),
            type=CommandType.RUN)))
        await w.settle()
        assert w.metric("ccaa_sessions", state="running") == 1
        assert w.metric("ccaa_tasks", state="queued") == 1
        [task] = w.store.tasks("s1")
        await w.run(task.id)
        w.clock.now += 42
        usage = {"claude-sonnet-4": {"inputTokens": 300, "outputTokens": 150,
                                     "cacheReadInputTokens": 20, "costUSD": 0.25},
                 "claude-haiku": {"inputTokens": 10, "outputTokens": 5, "costUSD": 0.01}}
        await w.result(task.id, Outcome.SUCCEEDED, duration_s=3.5,
                       data={"total_cost_usd": 0.26, "model_usage": usage})
        assert w.metric("ccaa_cost_usd_total", role="worker", model="claude-sonnet-4") == \
            pytest.approx(0.25)
        assert w.metric("ccaa_cost_usd_total", role="worker", model="claude-haiku") == \
            pytest.approx(0.01)
        assert w.metric("ccaa_tokens_total", role="worker", model="claude-sonnet-4",
                        type="output") == 150
        assert w.metric("ccaa_tokens_total", role="worker", model="claude-sonnet-4",
                        type="cache_read") == 20
        assert w.metric("ccaa_attempt_duration_seconds_sum", role="worker", kind="run",
                        outcome="succeeded") == pytest.approx(3.5)
        # the task's duration runs from its creation (the queue wait included)
        assert w.metric("ccaa_task_duration_seconds_sum", role="worker", kind="run",
                        state="succeeded") == pytest.approx(42)
        assert w.metric("ccaa_tasks", state="succeeded") == 1
        assert w.metric("ccaa_tasks", state="queued") == 0
        assert w.metric("ccaa_sessions", state="succeeded") == 1
        assert w.metric("ccaa_sessions_finished_total", state="succeeded") == 1
    scenario(tmp_path, go)


def test_a_cost_without_a_model_breakdown_is_counted_under_unknown(tmp_path):
    async def go(w: World):
        task_id = await w.create("s1")
        await w.run(task_id)
        await w.result(task_id, Outcome.SUCCEEDED, data={"total_cost_usd": 0.5})
        assert w.metric("ccaa_cost_usd_total", role="worker", model="unknown") == \
            pytest.approx(0.5)
    scenario(tmp_path, go)


def test_gate_results_and_review_verdicts_are_counted(tmp_path):
    make_repo(tmp_path)

    async def go(w: World):
        for name, gate in w.config.gates.items():
            gate.command = "true" if name == "tests" else ""
        await start(w)
        gate_runs = []

        async def on_task(t):
            if t.kind == "plan":
                await finish(w, t, text=plan_text("a"))
            elif t.kind == "gate":
                gate_runs.append(t.id)
                # the first run of the tests gate fails, the second passes
                await finish(w, t, exit_code=1 if len(gate_runs) == 1 else 0)
            elif t.kind == "review":
                await finish(w, t, text='{"verdict": "approve", "reasons": ["ok"]}')
            else:
                await finish(w, t)

        await run_until_done(w, on_task)
        assert w.store.session("s1")["state"] == "succeeded"
        assert w.metric("ccaa_gate_results_total", gate="tests", result="failed") == 1
        assert w.metric("ccaa_gate_results_total", gate="tests", result="passed") >= 1
        assert w.metric("ccaa_reviews_total", verdict="approve") == 1
        assert w.metric("ccaa_task_duration_seconds_count", role="architect", kind="plan",
                        state="succeeded") == 1
    scenario(tmp_path, go, **world_config(retry_attempts=0))


def test_running_sessions_show_budget_spent_and_time_since_a_change(tmp_path):
    async def go(w: World):
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=CommandSubmit(text="run it", repo=w.repo, budget_usd=2.0),
            type=CommandType.RUN)))
        await w.settle()
        [task] = w.store.tasks("s1")
        await w.run(task.id)
        assert w.metric("ccaa_session_idle_seconds", session="s1") == 0
        w.clock.now += 600  # a long attempt: nothing changes in the session meanwhile
        assert w.metric("ccaa_session_idle_seconds", session="s1") == pytest.approx(600)
        assert w.metric("ccaa_session_budget_used_ratio", session="s1") == 0
        await w.result(task.id, Outcome.FAILED, data={"total_cost_usd": 1.5})
        # the retry is due later; the session is still running, 75% of its budget spent
        assert w.store.session("s1")["state"] == "running"
        assert w.metric("ccaa_session_budget_used_ratio", session="s1") == pytest.approx(0.75)
        assert w.metric("ccaa_session_idle_seconds", session="s1") == 0
        # a finished session is no longer listed
        w.clock.now += 10
        w.orch.schedule()
        await w.settle()
        await w.run(task.id)
        await w.result(task.id, Outcome.SUCCEEDED)
        assert w.store.session("s1")["state"] == "succeeded"
        assert w.registry.get_sample_value("ccaa_session_idle_seconds", {"session": "s1"}) \
            is None
    scenario(tmp_path, go)



def test_state_commits_are_counted_as_the_store_commits(tmp_path):
    async def go(w: World):
        before = w.registry.get_sample_value("ccaa_state_commits_total")
        assert before == w.store.commits
        await w.orch.on_session_create(w.msg(SessionCreate(
            session_id="s1", command=CommandSubmit(text="run it", repo=w.repo),
            type=CommandType.RUN)))
        await w.settle()
        assert w.store.commits > before
        assert w.registry.get_sample_value("ccaa_state_commits_total") == w.store.commits
    scenario(tmp_path, go)
