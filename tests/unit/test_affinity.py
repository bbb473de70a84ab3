"""Affinity in the distributor: a later attempt goes back to its agent, then its host; work
on a repository goes to hosts whose cache holds it; otherwise the strategy decides."""

from __future__ import annotations

import pytest

from protocols.task import TaskSpec
from services.distributor.choice import affinity, pick
from tests.unit.distributor_world import World, run, slot

pytestmark = pytest.mark.timeout(30)


def spec(attempt: str = "a1", prefer: str = "", cwd: str = "/repo", isolate: bool = True,
         task: str = "") -> TaskSpec:
    return TaskSpec(task_id=task or f"t-{attempt}", attempt_id=attempt, session_id="s1",
                    prompt="do it", cwd=cwd, isolate=isolate,
                    base_commit="a" * 40 if isolate else "", prefer_agent=prefer)


def on(host: str, name: str, load: int = 0, capacity: int = 1):
    s = slot(name, load=load, capacity=capacity)
    s.host = host
    return s


def test_a_later_attempt_prefers_its_agent_then_its_host_then_any():
    a1, a2, b1 = on("a", "a1"), on("a", "a2"), on("b", "b1")
    pool = [a1, a2, b1]
    assert affinity(spec(prefer="a1"), pool, "a") == ([a1], "agent")
    # busy (not in the free pool): another agent of its host
    assert affinity(spec(prefer="a1"), [a2, b1], "a") == ([a2], "host")
    assert affinity(spec(prefer="a1"), [b1], "a") == ([b1], "any")
    # the preferred agent is gone and its host unknown: any
    assert affinity(spec(prefer="zz"), pool, "") == (pool, "any")


def test_work_on_a_repository_prefers_hosts_caching_it_while_they_have_room():
    a1, b1, b2 = on("a", "a1"), on("b", "b1"), on("b", "b2")
    assert affinity(spec(), [a1, b1, b2], warm=frozenset({"b"})) == ([b1, b2], "cache")
    # every free agent is on a caching host: nothing to narrow
    assert affinity(spec(), [b1, b2], warm=frozenset({"b"})) == ([b1, b2], "any")
    # the strategy still decides within the tier (load_balanced: the least loaded)
    b1.inflight = {"x"}
    b1.capacity = 2
    agent, tier = pick("load_balanced", spec(), [a1, b1, b2], 0, warm=frozenset({"b"}))
    assert (agent.name, tier) == ("b2", "cache")


def test_the_distributor_sends_a_retry_back_and_remembers_caching_hosts():
    async def go(w: World):
        w.d.agent_up("a1", "worker", [], 1, host="a")
        w.d.agent_up("b1", "worker", [], 1, host="b")
        w.d.agent_up("b2", "worker", [], 1, host="b")
        await w.enqueue(spec("x1", task="t-1"))  # the first work on /repo: load_balanced
        first = w.peer.assigns[-1][0]
        await w.release("x1", first, "succeeded")
        # a second task on the same repository goes to the host now caching it
        await w.enqueue(spec("y1", task="t-2", prefer=""))
        assert w.d.hosts[w.peer.assigns[-1][0]] == w.d.hosts[first]
        await w.release("y1", w.peer.assigns[-1][0], "succeeded")
        # the first task's retry goes back to the agent that ran it
        await w.enqueue(spec("x2", task="t-1", prefer=first))
        assert w.peer.assigns[-1][0] == first
        assert w.metric("ccaa_assigned_affinity_total", match="agent") == 1
        assert w.metric("ccaa_assigned_affinity_total", match="any") == 1
        # work in place (no repository to cache) is not steered
        w.d.agents[first].inflight = {"busy"}
        await w.enqueue(spec("z1", task="t-3", isolate=False, cwd="/elsewhere"))
        assert w.metric("ccaa_assigned_affinity_total", match="any") == 2
    run(go)


def test_a_retry_names_the_agent_before_it_and_carries_its_report(tmp_path):
    from protocols.task import Outcome
    from tests.unit.orchestrator_world import World as Orch, scenario

    async def go(w: Orch):
        task_id = await w.create("s1")
        first = w.peer.enqueued()[-1]
        assert first.prefer_agent == "" and first.previous_summary == ""
        await w.run(task_id, "agent-b-1")
        await w.result(task_id, Outcome.FAILED, "agent-b-1",
                       data={"session_id": "sess-1", "result": "half done; tests fail"})
        w.clock.now += 5
        w.orch.schedule()
        await w.settle()
        retry = w.peer.enqueued()[-1]
        assert retry.attempt_id != first.attempt_id
        assert retry.resume_session == "sess-1" and retry.prefer_agent == "agent-b-1"
        assert retry.previous_summary == "half done; tests fail"
    scenario(tmp_path, go)
