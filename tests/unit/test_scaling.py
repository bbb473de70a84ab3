"""Auto-scaling decisions: grow while work waits and every agent is busy, shrink after a
surplus agent has idled long enough, never outside min/max, never within the cooldown."""

import pytest

from libs.config import AutoScalingConfig
from services.controller.scaling import Scaler

pytestmark = pytest.mark.timeout(10)

CFG = AutoScalingConfig(enabled=True, min_agents_per_type={"worker": 1},
                        max_agents_per_type={"worker": 3}, cooldown=5, idle_before_scale_down=30)


def test_grows_while_work_waits_and_all_agents_are_busy():
    s = Scaler(CFG, {"worker": 1})
    assert s.step("worker", queued=2, agents={"w1": "busy"}, last_agent="w1", now=100) == 2
    # within the cooldown nothing changes
    assert s.step("worker", 2, {"w1": "busy", "w2": "busy"}, "w2", now=103) is None
    assert s.step("worker", 2, {"w1": "busy", "w2": "busy"}, "w2", now=106) == 3
    assert s.step("worker", 2, {"w1": "busy", "w2": "busy", "w3": "busy"}, "w3", 200) is None


def test_does_not_grow_while_an_agent_is_idle_or_nothing_waits():
    s = Scaler(CFG, {"worker": 2})
    assert s.step("worker", 3, {"w1": "busy", "w2": "idle"}, "w2", now=100) is None
    assert s.step("worker", 0, {"w1": "busy", "w2": "busy"}, "w2", now=100) is None
    # a pool whose agents have not all registered yet does not grow either
    assert s.step("worker", 3, {"w1": "busy"}, "w2", now=100) is None


def test_shrinks_after_the_last_agent_idles_long_enough_down_to_the_minimum():
    s = Scaler(CFG, {"worker": 2})
    assert s.step("worker", 0, {"w1": "idle", "w2": "idle"}, "w2", now=100) is None
    assert s.step("worker", 0, {"w1": "idle", "w2": "idle"}, "w2", now=120) is None
    assert s.step("worker", 0, {"w1": "idle", "w2": "idle"}, "w2", now=131) == 1
    assert s.step("worker", 0, {"w1": "idle"}, "w1", now=500) is None  # the minimum
    # busy again resets the idle clock
    s2 = Scaler(CFG, {"worker": 2})
    s2.step("worker", 0, {"w1": "idle", "w2": "idle"}, "w2", now=100)
    s2.step("worker", 0, {"w1": "idle", "w2": "busy"}, "w2", now=120)
    assert s2.step("worker", 0, {"w1": "idle", "w2": "idle"}, "w2", now=140) is None


def test_roles_without_limits_keep_their_configured_count():
    s = Scaler(CFG, {"manager": 1})
    assert s.step("manager", 5, {"m1": "busy"}, "m1", now=100) is None


def test_a_role_started_with_no_agents_grows_when_its_work_waits():
    """Work for a role with count 0 would wait forever; a max above 0 lets the pool grow."""
    cfg = AutoScalingConfig(enabled=True, min_agents_per_type={"manager": 0},
                            max_agents_per_type={"manager": 2}, cooldown=0)
    s = Scaler(cfg, {"manager": 0})
    assert s.step("manager", queued=1, agents={}, last_agent="", now=100) == 1


def test_never_grows_past_what_the_hosts_memory_allows():
    from services.controller.scaling import memory_room

    s = Scaler(CFG, {"worker": 1})
    assert s.step("worker", 2, {"w1": "busy"}, "w1", now=100, room=0) is None
    assert s.wanted_more("worker", 2, {"w1": "busy"})  # it would, memory permitting
    assert s.step("worker", 2, {"w1": "busy"}, "w1", now=101, room=1) == 2
    # below the minimum, memory still bounds how many are started
    low = Scaler(AutoScalingConfig(enabled=True, min_agents_per_type={"worker": 3}), {"worker": 0})
    assert low.step("worker", 0, {}, "", now=100, room=1) == 1
    # room: available less the reserve, in units of one agent's need
    assert memory_room(available_mb=2000, reserve_mb=500, per_agent_mb=400) == 3
    assert memory_room(available_mb=800, reserve_mb=500, per_agent_mb=400) == 0
    assert memory_room(available_mb=100, reserve_mb=500, per_agent_mb=400) == 0
