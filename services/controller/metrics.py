"""The controller's pool metrics, recomputed from the live processes after every change
(spawn, exit, stop by scale-down or memory limit), so they always match reality."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.controller.pool import AgentPool, Slot


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry, roles: list[str]):
        self.roles = list(roles)
        self.running = Gauge("ccaa_pool_agents", "agent processes alive, by role", ["role"],
                             registry=registry)
        self.restarts = Counter("ccaa_pool_restarts_total", "agent restarts, by role", ["role"],
                                registry=registry)
        self.memory_kills = Counter("ccaa_pool_memory_stops_total", "agents stopped for "
                                    "exceeding resources.max_memory_mb, by role", ["role"],
                                    registry=registry)
        self.scaled = Counter("ccaa_pool_scaled_total", "auto-scaling changes, by role and "
                              "direction", ["role", "direction"], registry=registry)
        self.memory_room = Gauge("ccaa_pool_memory_room_agents", "more agents this host's "
                                 "available memory allows (auto-scaling starts no more)",
                                 registry=registry)
        self.memory_bound = Counter("ccaa_pool_memory_bound_total", "scale-ups not made "
                                    "because the host's memory allows no more agents, by role",
                                    ["role"], registry=registry)
        for role in self.roles:  # every series exists from the start (increase() sees the first)
            self.running.labels(role).set(0)
            self.restarts.labels(role)
            self.memory_kills.labels(role)
            self.memory_bound.labels(role)
            for direction in ("up", "down"):
                self.scaled.labels(role, direction)

    def changed(self, event: str, slot: Slot, pool: AgentPool) -> None:
        if event == "exited":
            self.restarts.labels(slot.role).inc()
        live = pool.live()
        for role in self.roles:
            self.running.labels(role).set(sum(1 for s in live if s.role == role))
