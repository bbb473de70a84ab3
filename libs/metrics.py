"""Prometheus metrics: a registry per process (injected, so tests read exact values)."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)


class PeerMetrics:
    """What every bus peer counts about its own traffic."""

    def __init__(self, registry: CollectorRegistry, service: str):
        self.registry = registry
        labels = {"service": service}
        self.received = Counter(
            "ccaa_messages_received_total", "messages received, by type",
            ["type"], registry=registry,
        )
        self.sent = Counter(
            "ccaa_messages_sent_total", "messages sent, by type", ["type"], registry=registry
        )
        self.protocol_errors = Counter(
            "ccaa_protocol_errors_total",
            "bad input received or error replies received, by code and direction",
            ["code", "direction"], registry=registry,
        )
        from protocols import ErrorCode

        for code in ErrorCode:  # every series exists from the start (increase() sees the first)
            for direction in ("in", "received"):
                self.protocol_errors.labels(code.value, direction)
        self.withheld = Counter(
            "ccaa_messages_withheld_total", "messages not sent because the state they report "
            "could not be made durable (the receiver's retry or timeout takes over)",
            registry=registry,
        )
        self.reconnects = Counter(
            "ccaa_hub_reconnects_total", "times this peer reconnected to the hub",
            registry=registry,
        )
        self.resent = Counter(
            "ccaa_requests_resent_total", "requests sent again after re-registering, because "
            "the hub had refused them unrouted (this peer had been declared lost)",
            ["type"], registry=registry,
        )
        self.request_seconds = Histogram(
            "ccaa_request_seconds", "request round-trip time", ["type"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
        )
        self.up = Gauge("ccaa_up", "1 while the process serves", ["service"], registry=registry)
        self.up.labels(**labels).set(1)


def new_registry(process: bool = True) -> CollectorRegistry:
    """A process's own registry; with ``process``, the standard process collectors too:
    ``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
    ``process_open_fds``, ``process_start_time_seconds``, Python's GC and version."""
    registry = CollectorRegistry()
    if process:
        ProcessCollector(registry=registry)
        registry.register(PLATFORM_COLLECTOR)
        registry.register(GC_COLLECTOR)
    return registry
