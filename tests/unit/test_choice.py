"""Choosing an agent: the four distribution strategies and eligibility, as pure
functions."""

from __future__ import annotations

import pytest

from services.distributor.choice import (
    AgentSlot,
    Record,
    choose,
    eligible,
    expected_seconds_per_success,
)
from tests.unit.distributor_world import slot, spec

pytestmark = pytest.mark.timeout(30)


def test_load_balanced_picks_the_least_loaded_by_ratio():
    agents = [slot("a", capacity=2, load=1), slot("b", capacity=4, load=1),
              slot("c", capacity=1, load=0)]
    assert choose("load_balanced", spec(), agents, 0).name == "c"
    agents[2].inflight.add("x")  # c is full now
    assert choose("load_balanced", spec(), agents, 0).name == "b"  # 1/4 < 1/2


def test_load_balanced_ties_break_by_name():
    agents = [slot("zed", capacity=2), slot("amy", capacity=2)]
    assert choose("load_balanced", spec(), agents, 5).name == "amy"


def test_round_robin_rotates_with_the_turn():
    agents = [slot("c", capacity=9), slot("a", capacity=9), slot("b", capacity=9)]
    picks = [choose("round_robin", spec(), agents, turn).name for turn in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_capability_based_picks_the_most_specific_agent():
    agents = [slot("generalist", caps=("python", "rust", "go", "docs")),
              slot("pythonista", caps=("python", "docs")),
              slot("exact", caps=("python",)),
              slot("wrong", caps=("rust",))]
    assert choose("capability_based", spec(caps=["python"]), agents, 0).name == "exact"
    # exact is busy: the next most specific
    agents[2].inflight.add("x")
    assert choose("capability_based", spec(caps=["python"]), agents, 0).name == "pythonista"


def rec(agent: AgentSlot, attempts: int, succeeded: int, busy: float) -> AgentSlot:
    agent.record = Record(attempts, succeeded, busy)
    return agent


def test_performance_based_ranks_by_expected_time_per_success():
    agents = [rec(slot("slow"), 10, 10, 100.0), rec(slot("fast"), 10, 10, 30.0),
              rec(slot("flaky"), 10, 5, 30.0)]
    assert choose("performance_based", spec(), agents, 0).name == "fast"
    agents[1].inflight.add("x")  # fast is busy: slow but sure beats fast but flaky
    assert choose("performance_based", spec(), agents, 0).name == "slow"


def test_an_agent_that_fails_fast_ranks_last_and_a_new_one_gets_tried():
    good = rec(slot("good"), 20, 19, 60.0)
    ok = rec(slot("ok"), 20, 16, 80.0)
    failer = rec(slot("failer"), 4, 0, 0.4)  # four failures, 0.1 s each
    new = slot("new")
    pool = [good, ok, failer, new]
    scores = {a.name: expected_seconds_per_success(a, pool) for a in pool}
    # a new agent scores like the pool's average: behind the good, ahead of the others
    assert scores["good"] < scores["new"] < scores["ok"] < scores["failer"]
    ok.inflight.add("x")
    assert choose("performance_based", spec(), pool, 0).name == "good"
    good.inflight.add("x")
    assert choose("performance_based", spec(), pool, 0).name == "new"
    # every further failure makes it worse, however fast
    before = scores["failer"]
    failer.record.add("failed", 0.1)
    assert expected_seconds_per_success(failer, pool) > before


def test_role_and_capability_filtering_and_capacity():
    agents = [slot("arch", role="architect", caps=("python",)),
              slot("w-nocap", caps=("go",)),
              slot("w-full", caps=("python", "git"), capacity=1, load=1),
              slot("w-ok", caps=("python", "git", "docs"), capacity=2, load=1)]
    need = spec(caps=["python", "git"])
    assert [a.name for a in eligible(need, agents)] == ["w-ok"]
    for strategy in ("load_balanced", "round_robin", "capability_based", "performance_based"):
        assert choose(strategy, need, agents, 3).name == "w-ok"
    assert choose("load_balanced", spec(role="manager"), agents, 0) is None
    assert choose("load_balanced", spec(caps=["cobol"]), agents, 0) is None
    assert choose("round_robin", spec(), [], 0) is None


def test_zero_capacity_agent_is_never_chosen():
    assert choose("load_balanced", spec(), [slot("z", capacity=0)], 0) is None
