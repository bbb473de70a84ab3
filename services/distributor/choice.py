"""Choosing an agent for a task: the four distribution strategies, as pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.task import TaskSpec


#: weight of the pool's average in an agent's performance estimate (pseudo-attempts)
PRIOR_WEIGHT = 2.0


@dataclass
class Record:
    """An agent's attempt record (by name, so it outlives the agent's process and the
    distributor's: seeded from the orchestrator's attempts at start)."""

    attempts: int = 0  # attempts that ended with a verdict: succeeded, failed or timed out
    succeeded: int = 0
    busy_s: float = 0.0  # their summed duration

    def add(self, outcome: str, seconds: float) -> None:
        self.attempts += 1
        self.succeeded += outcome == "succeeded"
        self.busy_s += max(0.0, seconds)


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
    record: Record = field(default_factory=Record)
    host: str = ""

    @property
    def load(self) -> int:
        return len(self.inflight) + self.unknown_running

    @property
    def free(self) -> bool:
        return self.load < self.capacity

    def mean_seconds(self) -> float:
        return self.busy_seconds / self.completed if self.completed else 0.0


def expected_seconds_per_success(agent: AgentSlot, pool: list[AgentSlot]) -> float:
    """performance_based: the time an agent is expected to spend per successful attempt,
    where a failed attempt also costs the redo it causes elsewhere:

        (busy_s + failures * T0 + k * T0) / (succeeded + k * P0)

    T0 is the pool's mean attempt time, P0 its success rate, k = PRIOR_WEIGHT. An agent
    without history scores T0 / P0, the pool's average, so new agents get tried; each
    failure makes an agent worse however fast it failed; with enough history an agent's
    own figures dominate."""
    attempts = sum(a.record.attempts for a in pool)
    t0 = sum(a.record.busy_s for a in pool) / attempts if attempts else 1.0
    p0 = sum(a.record.succeeded for a in pool) / attempts if attempts else 1.0
    t0, p0 = max(t0, 1e-3), max(p0, 0.05)
    r, k = agent.record, PRIOR_WEIGHT
    failures = r.attempts - r.succeeded
    return (r.busy_s + failures * t0 + k * t0) / (r.succeeded + k * p0)


def eligible(task: TaskSpec, agents: list[AgentSlot], now: float = 0.0) -> list[AgentSlot]:
    need = set(task.capabilities)
    return [a for a in agents if a.role == task.role and a.free and need <= a.capabilities
            and a.cooldown_until <= now]


def affinity(task: TaskSpec, pool: list[AgentSlot], prefer_host: str = "",
             warm: frozenset[str] = frozenset()) -> tuple[list[AgentSlot], str]:
    """The free agents to choose among, and why: a later attempt goes back to the agent
    that ran the one before ("agent"), else to another on its host ("host"), where its
    worktree, caches and Claude Code session are; other work of a repository goes to the
    hosts whose cache already holds it ("cache"); else any ("any")."""
    if task.prefer_agent:
        tier = [a for a in pool if a.name == task.prefer_agent]
        if tier:
            return tier, "agent"
        tier = [a for a in pool if prefer_host and a.host == prefer_host]
        if tier:
            return tier, "host"
    tier = [a for a in pool if a.host in warm]
    if tier and len(tier) < len(pool):
        return tier, "cache"
    return pool, "any"


def choose(strategy: str, task: TaskSpec, agents: list[AgentSlot], turn: int,
           now: float = 0.0) -> AgentSlot | None:
    """Pick an agent for ``task`` or None. ``turn`` advances round_robin."""
    return pick(strategy, task, agents, turn, now)[0]


def pick(strategy: str, task: TaskSpec, agents: list[AgentSlot], turn: int, now: float = 0.0,
         prefer_host: str = "", warm: frozenset[str] = frozenset()
         ) -> tuple[AgentSlot | None, str]:
    """``choose`` within the affinity tier (see ``affinity``); also says which tier."""
    pool = sorted(eligible(task, agents, now), key=lambda a: a.name)
    if not pool:
        return None, ""
    pool, tier = affinity(task, pool, prefer_host, warm)
    return _strategy(strategy, task, pool, agents, turn), tier


def _strategy(strategy: str, task: TaskSpec, pool: list[AgentSlot], agents: list[AgentSlot],
              turn: int) -> AgentSlot:
    if strategy == "round_robin":
        return pool[turn % len(pool)]
    if strategy == "capability_based":
        return min(pool, key=lambda a: (len(a.capabilities - set(task.capabilities)),
                                        a.load / a.capacity, a.name))
    if strategy == "performance_based":
        everyone = [a for a in agents if a.role == task.role]  # history of busy ones counts
        return min(pool, key=lambda a: (round(expected_seconds_per_success(a, everyone), 6),
                                        a.load / a.capacity, a.name))
    return min(pool, key=lambda a: (a.load / a.capacity, a.load, a.name))  # load_balanced


def unassignable_reason(role: str, capabilities: frozenset[str], agents: list[AgentSlot]) -> str:
    """Why no registered agent could ever take work of this role and these capabilities,
    whatever their load ("" when one could)."""
    of_role = [a for a in agents if a.role == role and a.capacity > 0]
    if not of_role:
        return f"no agent with role {role}"
    if any(capabilities <= a.capabilities for a in of_role):
        return ""
    have = set().union(*(a.capabilities for a in of_role))
    missing = sorted(capabilities - have)
    if missing:
        return (f"no agent with capability {', '.join(missing)} (role {role} agents have: "
                f"{', '.join(sorted(have)) or 'none'})")
    return f"no single {role} agent has all of {', '.join(sorted(capabilities))}"
