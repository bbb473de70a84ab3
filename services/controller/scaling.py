"""Auto-scaling: how many agents of a role this host should run, decided from the work
waiting for the role (the distributor's queue) and the state of this host's agents."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.config import AutoScalingConfig


@dataclass
class RoleState:
    count: int  # agents this pool runs for the role now
    minimum: int
    maximum: int
    last_change: float = 0.0
    idle_since: dict[str, float] = field(default_factory=dict)  # agent -> idle since


#: ``room`` when memory sets no bound
UNBOUNDED = 1 << 30


def memory_room(available_mb: float, reserve_mb: float, per_agent_mb: float) -> int:
    """How many more agents this host's available memory allows."""
    return max(0, int((available_mb - reserve_mb) // max(per_agent_mb, 1.0)))


def decide(state: RoleState, queued: int, busy: list[bool], last_agent_idle_for: float,
           now: float, cfg: AutoScalingConfig, room: int = UNBOUNDED) -> int:
    """The pool size to have. ``busy``: one flag per live local agent of the role;
    ``last_agent_idle_for``: how long the agent that would be stopped first has been idle;
    ``room``: how many more agents the host's memory allows (never more are started)."""
    count = state.count
    if now - state.last_change < cfg.cooldown:
        return count
    if count < state.minimum:
        return min(state.minimum, count + room)
    if queued > 0 and all(busy) and len(busy) >= count and count < state.maximum:
        return count + 1 if room > 0 else count
    if (queued == 0 and count > state.minimum
            and last_agent_idle_for >= cfg.idle_before_scale_down):
        return count - 1
    return count


class Scaler:
    """Keeps per-role state between decisions; the controller feeds it observations."""

    def __init__(self, cfg: AutoScalingConfig, counts: dict[str, int]):
        self.cfg = cfg
        self.roles = {
            role: RoleState(count=n, minimum=cfg.min_agents_per_type.get(role, n),
                            maximum=max(cfg.max_agents_per_type.get(role, n),
                                        cfg.min_agents_per_type.get(role, n)))
            for role, n in counts.items()
        }
        self.memory_bound: set[str] = set()  # roles that wanted to grow but memory was short

    def step(self, role: str, queued: int, agents: dict[str, str], last_agent: str,
             now: float, room: int = UNBOUNDED) -> int | None:
        """``agents``: this host's live agents of the role, name -> state (idle/busy);
        ``room``: more agents the host's memory allows. Returns the new pool size, or None
        for no change."""
        state = self.roles[role]
        for name, s in agents.items():
            if s == "idle":
                state.idle_since.setdefault(name, now)
            else:
                state.idle_since.pop(name, None)
        for gone in set(state.idle_since) - set(agents):
            del state.idle_since[gone]
        idle_for = now - state.idle_since[last_agent] if last_agent in state.idle_since else 0.0
        busy = [s != "idle" for s in agents.values()]
        new = decide(state, queued, busy, idle_for, now, self.cfg, room)
        if new == state.count:
            return None
        state.count, state.last_change = new, now
        return new

    def wanted_more(self, role: str, queued: int, agents: dict[str, str]) -> bool:
        """Whether the role's pool would grow now if memory allowed it."""
        state = self.roles[role]
        busy = [s != "idle" for s in agents.values()]
        return (queued > 0 and all(busy) and len(busy) >= state.count
                and state.count < state.maximum)
