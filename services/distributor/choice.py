"""Choosing an agent for a task: the four distribution strategies, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.task import TaskSpec


@dataclass
class AgentSlot:
    name: str
    role: str
    capabilities: set[str]
    capacity: int
    inflight: set[str] = field(default_factory=set)  # attempt ids assigned and not released
    completed: int = 0
    busy_seconds: float = 0.0  # assign -> release time, summed
    unknown_running: int = 0  # tasks the agent reports that this distributor did not assign
    cooldown_until: float = 0.0  # after a refusal or no answer, skipped until then

    @property
    def load(self) -> int:
        return len(self.inflight) + self.unknown_running

    @property
    def free(self) -> bool:
        return self.load < self.capacity

    def mean_seconds(self) -> float:
        return self.busy_seconds / self.completed if self.completed else 0.0


def eligible(task: TaskSpec, agents: list[AgentSlot], now: float = 0.0) -> list[AgentSlot]:
    need = set(task.capabilities)
    return [a for a in agents if a.role == task.role and a.free and need <= a.capabilities
            and a.cooldown_until <= now]


def choose(strategy: str, task: TaskSpec, agents: list[AgentSlot], turn: int,
           now: float = 0.0) -> AgentSlot | None:
    """Pick an agent for ``task`` or None. ``turn`` advances round_robin."""
    pool = sorted(eligible(task, agents, now), key=lambda a: a.name)
    if not pool:
        return None
    if strategy == "round_robin":
        return pool[turn % len(pool)]
    if strategy == "capability_based":
        return min(pool, key=lambda a: (len(a.capabilities - set(task.capabilities)),
                                        a.load / a.capacity, a.name))
    if strategy == "performance_based":
        return min(pool, key=lambda a: (a.mean_seconds(), a.load / a.capacity, a.name))
    return min(pool, key=lambda a: (a.load / a.capacity, a.load, a.name))  # load_balanced
