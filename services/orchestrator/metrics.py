"""The orchestrator's metrics: what happened to tasks, attempts, gates, reviews and money.

Counters whose label values are known in advance (states, roles from the configuration,
gates, task kinds) are created at start with zero, so that ``increase()`` and ``rate()``
see the first event too. The current number of sessions and tasks by state is read from
the state database at each scrape: it is the truth, and a restart changes nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protocols.command import SessionState
from protocols.task import Outcome, TaskState

#: the kinds of task a workflow makes (services/orchestrator/workflow.py)
TASK_KINDS = ("plan", "replan", "analyze", "work", "run", "review", "gate", "final_gate",
              "resolve")
#: the role each kind usually runs on: the label sets created at start
USUAL_ROLES = {"plan": ("architect",), "replan": ("architect",), "analyze": ("architect",),
               "work": ("worker",), "run": ("worker", "utility"), "review": ("manager",),
               "gate": ("utility",), "final_gate": ("utility",), "resolve": ("manager",)}
END_STATES = ("succeeded", "failed", "timed_out", "cancelled")
GATE_RESULTS = ("passed", "failed", "not_available")
REVIEW_VERDICTS = ("approve", "changes_requested", "unreadable")
TOKEN_TYPES = {"inputTokens": "input", "outputTokens": "output",
               "cacheReadInputTokens": "cache_read",
               "cacheCreationInputTokens": "cache_write"}

#: seconds: from sub-second in-process tasks to hour-long Claude Code sessions
DURATION_BUCKETS = (0.01, 0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600,
                    7200)


def count_states(conn: sqlite3.Connection, table: str) -> dict[str, int]:
    """Rows of ``table`` (sessions or tasks) by state, every state listed (indexed)."""
    states = [s.value for s in (SessionState if table == "sessions" else TaskState)]
    counts = dict.fromkeys(states, 0)
    counts.update({state: n for state, n in conn.execute(
        f"SELECT state, count(*) FROM {table} GROUP BY state")})
    return counts


class StateCounts(Collector):
    """Read from the database when scraped (a restart of any service changes nothing):
    ``ccaa_sessions{state}`` and ``ccaa_tasks{state}`` (indexed on state), and for each
    running session how much of its budget is spent and how long nothing changed in it;
    and ``ccaa_state_commits_total``, the transactions committed (a loop turn's writes
    commit as one: state changes per commit is how well they group under load)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float],
                 commits: Callable[[], int] = lambda: 0):
        self.conn = conn
        self.clock = clock
        self.commits = commits

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._counts()
        yield from self._running()
        yield CounterMetricFamily("ccaa_state_commits", "transactions committed to the "
                                  "state database", value=self.commits())

    def _running(self) -> Iterator[GaugeMetricFamily]:
        budget = GaugeMetricFamily(
            "ccaa_session_budget_used_ratio", "a running session's cost over its budget "
            "(sessions with a budget only; at 1 no further task is started)",
            labels=["session"])
        idle = GaugeMetricFamily(
            "ccaa_session_idle_seconds", "seconds since anything in a running session "
            "changed state (a task started, ended, was queued)", labels=["session"])
        try:
            rows = self.conn.execute(
                "SELECT s.id, s.cost_usd, s.budget_usd, max(s.updated_at, "
                "coalesce((SELECT max(t.updated_at) FROM tasks t WHERE t.session_id = s.id), 0))"
                " AS changed FROM sessions s WHERE s.state = 'running'").fetchall()
        except sqlite3.Error:
            return
        now = self.clock()
        for sid, cost, limit, changed in rows:
            if limit:
                budget.add_metric([sid], cost / limit)
            idle.add_metric([sid], max(0.0, now - changed))
        yield budget
        yield idle

    def _counts(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily("ccaa_sessions", "sessions by state (from the state "
                                     "database)", labels=["state"])
        tasks = GaugeMetricFamily("ccaa_tasks", "tasks by state (from the state database)",
                                  labels=["state"])
        for family, table in ((sessions, "sessions"), (tasks, "tasks")):
            try:
                counts = count_states(self.conn, table)
            except sqlite3.Error:
                continue  # the store's own checks report a broken database
            for state, n in counts.items():
                family.add_metric([state], n)
            yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # collected at scrape time only (the database may not be open yet)


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry, roles: Iterable[str] = (),
                 gates: Iterable[str] = ()):
        self.registry = registry
        self.transitions = Counter("ccaa_task_transitions_total", "task state changes",
                                   ["to_state"], registry=registry)
        self.sessions = Counter("ccaa_sessions_finished_total", "sessions finished, by state",
                                ["state"], registry=registry)
        self.stale_results = Counter("ccaa_stale_results_total",
                                     "results from superseded attempts (recorded, not applied)",
                                     registry=registry)
        self.lost_attempts = Counter("ccaa_attempts_lost_total",
                                     "attempts whose agent was lost", registry=registry)
        self.kept_attempts = Counter("ccaa_attempts_kept_total",
                                     "lost attempts kept because their agent came back (with "
                                     "the attempt running or its result) before the re-run "
                                     "reached an agent; the re-run was withdrawn",
                                     registry=registry)
        self.duplicates_stopped = Counter("ccaa_duplicate_attempts_stopped_total",
                                          "superseded attempts found still running and "
                                          "cancelled", registry=registry)
        self.schedule_failures = Counter(
            "ccaa_schedule_failures_total", "turns whose starting of ready tasks failed and was "
            "undone (the tasks stay ready; the next turn or reconcile tries again)",
            registry=registry)
        self.active = Gauge("ccaa_tasks_active", "tasks queued, assigned or running",
                            registry=registry)
        self.store_ok = Gauge("ccaa_store_ok", "1 while the state database is still the file "
                              "at its path (0: deleted or replaced; no work is accepted)",
                              registry=registry)
        self.store_ok.set(1)
        self.task_seconds = Histogram(
            "ccaa_task_duration_seconds", "a task from its creation to its end (retries and "
            "waits included), by role, kind and final state", ["role", "kind", "state"],
            buckets=DURATION_BUCKETS, registry=registry)
        self.attempt_seconds = Histogram(
            "ccaa_attempt_duration_seconds", "one attempt as its agent ran it, by role, kind "
            "and outcome", ["role", "kind", "outcome"], buckets=DURATION_BUCKETS,
            registry=registry)
        self.gates = Counter("ccaa_gate_results_total", "gate verdicts, by gate and result "
                             "(passed, failed, not_available: the tool is missing)",
                             ["gate", "result"], registry=registry)
        self.reviews = Counter("ccaa_reviews_total", "manager reviews of finished work, by "
                               "verdict (approve, changes_requested, unreadable)",
                               ["verdict"], registry=registry)
        self.cost = Counter("ccaa_cost_usd_total", "model cost reported by agents (USD), by "
                            "role and model", ["role", "model"], registry=registry)
        self.tokens = Counter("ccaa_tokens_total", "model tokens reported by agents, by role, "
                              "model and type (input, output, cache_read, cache_write)",
                              ["role", "model", "type"], registry=registry)
        self._zero(set(roles), list(gates))

    def _zero(self, roles: set[str], gates: list[str]) -> None:
        for state in TaskState:
            self.transitions.labels(state.value)
        for state in SessionState:
            if state != SessionState.RUNNING:
                self.sessions.labels(state.value)
        for kind, usual in USUAL_ROLES.items():
            for role in usual:
                if roles and role not in roles:
                    continue
                for state in ("succeeded", "failed"):
                    self.task_seconds.labels(role, kind, state)
                    self.attempt_seconds.labels(role, kind, state)
        for gate in gates:
            for result in GATE_RESULTS:
                self.gates.labels(gate, result)
        for verdict in REVIEW_VERDICTS:
            self.reviews.labels(verdict)

    def watch_states(self, conn: sqlite3.Connection, clock: Callable[[], float],
                     commits: Callable[[], int] = lambda: 0) -> None:
        self.registry.register(StateCounts(conn, clock, commits))

    def task_ended(self, role: str, kind: str, state: str, seconds: float) -> None:
        if state in END_STATES:
            self.task_seconds.labels(role, kind, state).observe(max(0.0, seconds))

    def attempt_ended(self, role: str, kind: str, outcome: Outcome, seconds: float) -> None:
        self.attempt_seconds.labels(role, kind, outcome.value).observe(max(0.0, seconds))

    def spent(self, role: str, data: dict) -> None:
        """Cost and tokens of one attempt, per model (Claude Code's modelUsage); a result
        without a per-model breakdown counts its total under model "unknown"."""
        per_model = data.get("model_usage")
        if isinstance(per_model, dict) and per_model:
            for model, usage in per_model.items():
                if not isinstance(usage, dict):
                    continue
                cost = usage.get("costUSD")
                if isinstance(cost, (int, float)) and cost > 0:
                    self.cost.labels(role, str(model)).inc(cost)
                for key, kind in TOKEN_TYPES.items():
                    n = usage.get(key)
                    if isinstance(n, int) and n > 0:
                        self.tokens.labels(role, str(model), kind).inc(n)
            return
        cost = data.get("total_cost_usd")
        if isinstance(cost, (int, float)) and cost > 0:
            self.cost.labels(role, "unknown").inc(cost)
