"""The distributor service with a fake peer: capacity, queue, releases, refusals, aging,
records, and telling owners about work no agent can take."""

from __future__ import annotations

import asyncio

import pytest

from protocols import Message, make_header
from protocols.peer import PeerInfo, PeerKind
from protocols.task import (
    AgentRecord,
    AgentStatsReply,
    QueueStats,
    TaskEnqueue,
    TaskReleased,
    TaskWaiting,
)
from services.distributor.service import COOLDOWN_SECONDS, AGING_SECONDS

pytestmark = pytest.mark.timeout(30)


from tests.unit.distributor_world import World, run, spec


def test_enqueue_assigns_and_leaves_telling_the_owner_to_the_agent():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", ["python"], 2)
        await w.enqueue(spec("a1", caps=["python"], owner="orch-2"))
        assert [(d, s.attempt_id) for d, s in w.peer.assigns] == [("agent-1", "a1")]
        # the agent tells the owner (task.accepted); the distributor sends it nothing more
        assert w.peer.dispatched() == [("a1", "agent-1")] and w.peer.sent == []
        assert w.d.agents["agent-1"].inflight == {"a1"}
        assert w.d.queue == {}
        assert w.metric("ccaa_tasks_assigned_total", strategy="load_balanced") == 1
        assert w.metric("ccaa_queue_depth") == 0
    run(go)


def test_an_attempt_that_ended_before_its_answer_frees_the_slot_with_the_answer():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.ended["agent-1"] = "agent-1"
        for attempt in ("a1", "a2", "a3"):
            await w.enqueue(spec(attempt))
        # each answer (the release) freed the one slot for the next: no release came apart
        assert [s.attempt_id for _, s in w.peer.assigns] == ["a1", "a2", "a3"]
        slot = w.d.agents["agent-1"]
        assert slot.inflight == set() and slot.completed == 3
        assert w.d.records["agent-1"].attempts == 3 and w.d.attempt_task == {}
    run(go)


def test_an_answer_naming_another_agent_frees_nothing():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.agent_up("agent-2", "worker", [], 1)
        w.peer.ended.update({"agent-1": "agent-2", "agent-2": "agent-1"})
        await w.enqueue(spec("a1"))
        [(agent, _)] = w.peer.assigns
        other = "agent-2" if agent == "agent-1" else "agent-1"
        assert w.d.agents[agent].inflight == {"a1"}  # still held: its own release is due
        assert w.d.agents[other].completed == 0 and w.d.records[other].attempts == 0
    run(go)


def test_no_eligible_agent_keeps_the_task_queued():
    async def go(w: World):
        w.d.agent_up("arch-1", "architect", [], 1)
        await w.enqueue(spec("a1", role="worker"))
        assert w.peer.assigns == [] and set(w.d.queue) == {"a1"}
        assert w.metric("ccaa_queue_depth") == 1
        w.d.agent_up("w-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "w-1")]
    run(go)


def test_enqueue_dedupes_by_attempt_id():
    async def go(w: World):
        await w.enqueue(spec("a1"))  # no agents: stays queued
        await w.enqueue(spec("a1"))
        assert len(w.d.queue) == 1
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        # now in flight on agent-1: a resend is still a duplicate
        await w.enqueue(spec("a1"))
        assert len(w.peer.assigns) == 1 and w.d.queue == {}
        # a new attempt of the same task is not
        await w.enqueue(spec("a2"))
        assert set(w.d.queue) == {"a2"}
    run(go)


def test_capacity_is_respected_and_release_dispatches_the_next():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 2)
        for a in ("a1", "a2", "a3"):
            await w.enqueue(spec(a))
        assert [s.attempt_id for _, s in w.peer.assigns] == ["a1", "a2"]
        assert set(w.d.queue) == {"a3"}
        assert w.metric("ccaa_queue_depth") == 1
        w.clock.now += 4.0
        await w.release("a1", "agent-1")
        assert [s.attempt_id for _, s in w.peer.assigns] == ["a1", "a2", "a3"]
        slot_ = w.d.agents["agent-1"]
        assert slot_.inflight == {"a2", "a3"}
        assert slot_.completed == 1 and slot_.busy_seconds == pytest.approx(4.0)
        assert w.d.queue == {}
    run(go)


def test_release_of_an_unknown_attempt_is_harmless():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        await w.enqueue(spec("a1"))
        await w.release("zzz", "agent-1")
        assert w.d.agents["agent-1"].inflight == {"a1"}
        assert w.d.agents["agent-1"].completed == 0
    run(go)


@pytest.mark.parametrize("named", ["", "agent-9"])
def test_a_release_frees_the_slot_of_whichever_agent_holds_the_attempt(named):
    """The owner withdraws a task it still thinks queued (its release names no agent)
    while the assignment is already done here: the slot must not leak."""
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        await w.enqueue(spec("a1"))
        assert w.d.agents["agent-1"].inflight == {"a1"}
        await w.release("a1", named)
        assert w.d.agents["agent-1"].inflight == set()
        await w.enqueue(spec("a2"))
        assert w.peer.dispatched()[-1] == ("a2", "agent-1")
    run(go)


def test_registry_reconciliation_frees_slots_the_agent_no_longer_uses():
    async def go(w: World):
        info = PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="worker", capacity=1)
        w.d.sync_agents([info])
        await w.enqueue(spec("a1"))
        # just assigned: not in the agent's (older) heartbeat yet, and that is fine
        w.clock.now += 1
        w.d.sync_agents([info])
        assert w.d.agents["agent-1"].inflight == {"a1"}
        running = info.model_copy(update={"running": ["t-a1"]})
        w.clock.now += 60
        w.d.sync_agents([running])  # a long task, still running: kept
        assert w.d.agents["agent-1"].inflight == {"a1"}
        w.clock.now += 1
        w.d.sync_agents([info])  # it no longer runs it and no release came
        assert w.d.agents["agent-1"].inflight == set()
        assert w.metric("ccaa_slots_reclaimed_total") == 1
        await w.enqueue(spec("a2"))
        assert w.peer.dispatched()[-1] == ("a2", "agent-1")
    run(go)


def test_a_stale_heartbeat_listing_a_just_released_task_does_not_block_the_agent():
    async def go(w: World):
        info = PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="worker", capacity=1)
        w.d.sync_agents([info])
        await w.enqueue(spec("a1"))
        await w.release("a1", "agent-1")
        # the registry still shows the task it just finished
        w.d.sync_agents([info.model_copy(update={"running": ["t-a1"]})])
        assert w.d.agents["agent-1"].load == 0
        await w.enqueue(spec("a2"))
        assert w.peer.dispatched()[-1] == ("a2", "agent-1")
    run(go)


def test_an_agent_frees_its_own_slot_at_once_and_its_outcome_is_recorded_once():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.agent_up("agent-2", "worker", [], 1)
        await w.enqueue(spec("a1"))
        await w.enqueue(spec("a2"))
        await w.enqueue(spec("a3"))
        holder = next(n for n, a in w.d.agents.items() if "a1" in a.inflight)
        other = "agent-2" if holder == "agent-1" else "agent-1"

        def from_agent(src: str, attempt: str) -> Message:
            body = TaskReleased(task_id=f"t-{attempt}", attempt_id=attempt, agent_id=src,
                                outcome="succeeded", duration_s=0.5)
            return Message(make_header(body.TYPE, src, "distributor"), body)

        # another agent cannot free a slot that is not its own
        await w.d.on_released(from_agent(other, "a1"))
        await w.peer.settle()
        assert "a1" in w.d.agents[holder].inflight and "a3" in w.d.queue
        # the holder's word frees it: a3 goes to it before the owner has said anything
        await w.d.on_released(from_agent(holder, "a1"))
        await w.peer.settle()
        assert w.d.agents[holder].inflight == {"a3"} and w.d.queue == {}
        assert w.d.records[holder].attempts == 1 and w.d.records[holder].succeeded == 1
        assert "a1" not in w.d.attempt_task  # nothing of it is left to the owner's release
        # an owner's release that still comes (e.g. from an older agent's result) frees
        # nothing more and does not count the attempt twice
        await w.release("a1", holder, outcome="succeeded", duration=0.5)
        assert w.d.agents[holder].inflight == {"a3"}
        assert w.d.records[holder].attempts == 1 and w.d.agents[holder].completed == 1
    run(go)


def test_release_of_a_still_queued_attempt_drops_it():
    async def go(w: World):
        await w.enqueue(spec("a1"))  # no agents
        await w.release("a1", "")
        assert w.d.queue == {}
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.assigns == []
    run(go)


def test_refused_assignment_puts_the_task_back_in_the_queue():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.refuse.add("agent-1")
        await w.enqueue(spec("a1", priority=3))
        assert set(w.d.queue) == {"a1"}
        assert w.d.queue["a1"].spec.priority == 3
        assert w.d.agents["agent-1"].inflight == set()
        assert "a1" not in w.d.assigned_at
        assert w.peer.dispatched() == []
        assert w.metric("ccaa_assign_refused_total") == 1
        assert w.metric("ccaa_queue_depth") == 1
        # the refusing agent is passed over for a while, not asked again at once
        w.peer.refuse.clear()
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == []
        # once the cooldown has passed, it gets the task
        w.clock.now += COOLDOWN_SECONDS + 0.1
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "agent-1")]
    run(go)


def test_unanswered_assignment_puts_the_task_back_and_another_agent_can_take_it():
    async def go(w: World):
        w.d.agent_up("agent-a", "worker", [], 1)
        w.peer.silent.add("agent-a")
        await w.enqueue(spec("a1"))
        assert set(w.d.queue) == {"a1"}
        assert w.d.agents["agent-a"].inflight == set()
        assert w.metric("ccaa_assign_refused_total") == 1
        # the hub declares the silent agent lost; a new agent arrives
        w.d.agent_down("agent-a")
        w.d.agent_up("agent-b", "worker", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "agent-b")]
    run(go)


def test_agent_down_drops_the_agent():
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.d.agent_up("agent-2", "worker", [], 1)
        await w.enqueue(spec("a1"))
        holder = w.peer.assigns[0][0]
        w.d.agent_down(holder)
        assert holder not in w.d.agents
        assert "a1" not in w.d.assigned_at
        assert w.metric("ccaa_agents_known") == 1
        await w.enqueue(spec("a2"))
        await w.enqueue(spec("a3"))
        other = "agent-2" if holder == "agent-1" else "agent-1"
        assert [d for d, _ in w.peer.assigns[1:]] == [other]
        assert set(w.d.queue) == {"a3"}
        w.d.agent_down("nobody")  # unknown: no error
    run(go)


def test_sync_agents_adds_updates_and_removes():
    async def go(w: World):
        w.d.agent_up("gone", "worker", [], 1)
        w.peer.agents = [
            PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="worker", capabilities=["x"],
                     capacity=3),
            PeerInfo(name="orchestrator", kind=PeerKind.SERVICE),
        ]
        await w.d.refresh()
        assert set(w.d.agents) == {"agent-1"}
        a = w.d.agents["agent-1"]
        assert (a.role, a.capabilities, a.capacity) == ("worker", {"x"}, 3)
        w.peer.agents = [PeerInfo(name="agent-1", kind=PeerKind.AGENT, role="utility",
                                  capacity=1)]
        await w.d.refresh()
        assert w.d.agents["agent-1"] is a and (a.role, a.capacity) == ("utility", 1)
    run(go)


def test_priority_then_aging_orders_the_queue():
    async def go(w: World):
        # no agent yet: everything waits
        w.clock.now = 0.0
        await w.enqueue(spec("old-low", priority=0))
        w.clock.now = 1.5 * AGING_SECONDS
        await w.enqueue(spec("new-high", priority=1))
        await w.enqueue(spec("new-top", priority=3))
        # scores: old-low 0 + 1.5 = 1.5; new-high 1 + 0 = 1; new-top 3
        w.d.agent_up("agent-1", "worker", [], 1)
        order = []
        w.d.dispatch()
        await w.peer.settle()
        for _ in range(3):
            order.append(w.peer.assigns[-1][1].attempt_id)
            await w.release(order[-1], "agent-1")
        assert order == ["new-top", "old-low", "new-high"]
    run(go)


def test_without_aging_higher_priority_goes_first():
    async def go(w: World):
        await w.enqueue(spec("p0", priority=0))
        await w.enqueue(spec("p5", priority=5))
        await w.enqueue(spec("p2", priority=2))
        w.d.agent_up("agent-1", "worker", [], 1)
        order = []
        w.d.dispatch()
        await w.peer.settle()
        for _ in range(3):
            order.append(w.peer.assigns[-1][1].attempt_id)
            await w.release(order[-1], "agent-1")
        assert order == ["p5", "p2", "p0"]
    run(go)


def test_round_robin_across_agents_through_the_service():
    async def go(w: World):
        for name in ("agent-c", "agent-a", "agent-b"):
            w.d.agent_up(name, "worker", [], 10)
        for i in range(6):
            await w.enqueue(spec(f"a{i}"))
        assert [d for d, _ in w.peer.assigns] == ["agent-a", "agent-b", "agent-c"] * 2
    run(go, strategy="round_robin")


def test_performance_based_learns_from_release_outcomes_and_ignores_interruptions():
    async def go(w: World):
        w.d.agent_up("agent-a", "worker", [], 5)
        w.d.agent_up("agent-b", "worker", [], 5)
        w.d.records["agent-a"].add("succeeded", 5.0)
        w.d.records["agent-b"].add("succeeded", 5.0)
        for n in range(3):  # b fails fast three times
            await w.enqueue(spec(f"f{n}"))
            await w.release(f"f{n}", "agent-b", outcome="failed", duration=0.1)
        await w.release("none", "agent-a", outcome="interrupted", duration=99)
        await w.release("none", "agent-a", outcome="lost")
        assert w.d.records["agent-a"].attempts == 1
        assert w.d.records["agent-b"].attempts == 4 and w.d.records["agent-b"].succeeded == 1
        await w.enqueue(spec("x"))
        assert w.peer.assigns[-1][0] == "agent-a"
    run(go, strategy="performance_based")


def test_records_survive_a_restart_through_the_orchestrators_history():
    async def go(w: World):
        w.peer.stats = AgentStatsReply(agents={
            "agent-a": AgentRecord(attempts=10, succeeded=2, busy_s=10.0),
            "agent-b": AgentRecord(attempts=10, succeeded=10, busy_s=50.0)})
        await w.d.load_records()
        await w.d.load_records()  # once only
        assert w.d.records["agent-b"].attempts == 10
        w.d.agent_up("agent-a", "worker", [], 1)
        w.d.agent_up("agent-b", "worker", [], 1)
        assert w.d.agents["agent-a"].record.succeeded == 2
        await w.enqueue(spec("x"))
        assert w.peer.assigns[-1][0] == "agent-b"
    run(go, strategy="performance_based")


def test_tasks_an_agent_reports_but_this_distributor_did_not_assign_take_its_capacity():
    """After a distributor restart its own bookkeeping is empty; the agents' reported
    running tasks (from the hub's registry) keep busy agents from looking free."""
    async def go(w: World):
        busy = PeerInfo(name="agent-busy", kind=PeerKind.AGENT, role="worker", capacity=1,
                        running=["task-from-before"])
        idle = PeerInfo(name="agent-idle", kind=PeerKind.AGENT, role="worker", capacity=1)
        w.d.sync_agents([busy, idle])
        assert w.d.agents["agent-busy"].load == 1
        await w.enqueue(spec("a1"))
        assert w.peer.dispatched() == [("a1", "agent-idle")]
    run(go)


def test_an_agent_that_answers_busy_is_tried_again_after_a_heartbeat_not_the_cooldown():
    async def go(w: World):
        w.config.communication.heartbeat_interval = 0.05
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.refuse.add("agent-1")  # still killing a cancelled run
        await w.enqueue(spec("a1"))
        assert "a1" in w.d.queue
        w.peer.refuse.clear()
        w.clock.now += 0.06
        retry = [t for t in w.peer.tasks if t.get_coro().__name__ == "_dispatch_after"]
        await asyncio.gather(*retry)  # the re-dispatch scheduled for the end of the pause
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "agent-1")]
    run(go)


def test_an_assignment_that_times_out_after_its_release_is_not_queued_again():
    """The agent ran the task although its answer to task.assign was lost: the
    orchestrator released the attempt before the request timed out, so it must not be
    handed out a second time."""
    async def go(w: World):
        w.d.agent_up("agent-1", "worker", [], 1)
        w.peer.silent.add("agent-1")
        w.peer.gate = asyncio.Event()
        await w.d.on_enqueue(w.msg(TaskEnqueue(task=spec("a1"))))
        await asyncio.sleep(0)  # wait-ok: the dispatch at the end of this turn
        assert w.d.agents["agent-1"].inflight == {"a1"}
        await w.d.on_released(w.msg(TaskReleased(task_id="t-a1", attempt_id="a1",
                                                 agent_id="agent-1")))
        w.peer.gate.set()  # now the assign request times out
        await w.peer.settle()
        assert w.d.queue == {} and w.d.agents["agent-1"].inflight == set()
    run(go)


def test_work_for_a_role_without_agents_is_reported():
    async def go(w: World):
        await w.enqueue(spec("a1", role="architect"))
        assert w.metric("ccaa_queue_without_agents", role="architect") == 1
        w.d.agent_up("arch-1", "architect", [], 1)
        w.d.dispatch()
        await w.peer.settle()
        assert w.peer.dispatched() == [("a1", "arch-1")]
        assert w.metric("ccaa_queue_without_agents", role="architect") == 0
    run(go)


def waiting_notices(w: World) -> list[tuple[str, str, str]]:
    return [(d, b.attempt_id, b.reason) for d, b in w.peer.sent if isinstance(b, TaskWaiting)]


def test_the_owner_is_told_when_no_agent_could_take_a_task_and_when_one_can():
    async def go(w: World):
        await w.enqueue(spec("a1", role="manager", owner="orch-x"))
        assert waiting_notices(w) == [("orch-x", "a1", "no agent with role manager")]
        await w.enqueue(spec("a1", role="manager", owner="orch-x"))  # re-enqueued: said again
        assert len(waiting_notices(w)) == 2
        w.d.agent_up("m-1", "manager", [], 1)
        w.d.agents["m-1"].inflight.add("other")  # busy: a1 stays queued, but can be taken
        w.d.dispatch()
        assert waiting_notices(w)[-1] == ("orch-x", "a1", "")
        await w.release("other", "m-1")
        assert w.peer.dispatched() == [("a1", "m-1")]
    run(go)


def test_a_missing_capability_is_named_and_does_not_count_for_scaling():
    async def go(w: World):
        w.d.agent_up("w-1", "worker", ["python", "shell"], 1)
        await w.enqueue(spec("a1", caps=["rust"]))
        await w.enqueue(spec("a2"))
        [(_, _, reason)] = waiting_notices(w)
        assert reason == "no agent with capability rust (role worker agents have: python, shell)"
        assert w.metric("ccaa_queue_without_capable_agents", role="worker") == 1
        w.d.agents["w-1"].inflight.add("busy")  # keep a3 queued
        await w.enqueue(spec("a3"))
        stats = await w.d.on_stats(w.msg(QueueStats()))
        assert stats.queued == {"worker": 1}  # a3 counts, a1 (rust) does not
        w.d.agent_down("w-1")
        assert waiting_notices(w)[-2:] == [("orchestrator", "a1", "no agent with role worker"),
                                           ("orchestrator", "a3", "no agent with role worker")]
    run(go)
