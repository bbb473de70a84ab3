"""The Grafana dashboard (grafana/dashboards/ccaa-overview.json), generated from the panels
below so that every expression is in one place; tests/integration/test_prometheus.py runs
each one against a real Prometheus scraping a live stack.

    python -m deploy.dashboard --write
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "ccaa-overview.json"
DATASOURCE = {"type": "prometheus", "uid": "ccaa-prometheus"}
#: what the variables stand for when every value is chosen (their allValue)
ALL = ".*"
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | bargauge
    legend: str = "__auto"
    description: str = ""
    width: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


ROWS = [
    Row("Health", [
        Panel("Services up", 'sum(up{peer_kind="service"})', kind="stat",
              description="Services answering Prometheus' scrapes (six on the hub host, plus "
                          "one controller per node)."),
        Panel("Services not answering", 'count(up{peer_kind="service"} == 0) or vector(0)',
              kind="stat", description="Alert CcaaServiceDown fires after a minute of this."),
        Panel("State database", "min(ccaa_store_ok)", kind="stat",
              description="1: the orchestrator's database is the file at its path; 0: it was "
                          "deleted or replaced and no work is accepted."),
        Panel("Peers registered, by kind", "sum by (kind) (ccaa_hub_peers)", legend="{{kind}}"),
        Panel("Memory (RSS) by service",
              'sum by (peer) (process_resident_memory_bytes{peer_kind="service"})',
              unit="bytes", legend="{{peer}}"),
        Panel("CPU by service",
              f'sum by (peer) (rate(process_cpu_seconds_total{{peer_kind="service"}}[{RATE}]))',
              unit="percentunit", legend="{{peer}}",
              description="Share of one core each service uses."),
    ]),
    Row("Throughput", [
        Panel("Sessions finished per minute, by state",
              f"sum by (state) (rate(ccaa_sessions_finished_total[{RATE}])) * 60",
              legend="{{state}}"),
        Panel("Tasks ended per minute, by kind",
              f'sum by (kind) (rate(ccaa_task_duration_seconds_count{{role=~"$role"}}[{RATE}]))'
              " * 60", legend="{{kind}}"),
        Panel("Queue depth", "sum(ccaa_queue_depth)", kind="stat",
              description="Tasks waiting in the distributor for an agent."),
        Panel("Sessions now, by state", "sum by (state) (ccaa_sessions)", kind="bargauge",
              legend="{{state}}", description="Counted in the orchestrator's database."),
        Panel("Tasks now, by state", "sum by (state) (ccaa_tasks)", kind="bargauge",
              legend="{{state}}", description="Counted in the orchestrator's database."),
        Panel("Hub messages routed per second", f"sum(rate(ccaa_hub_routed_total[{RATE}]))"),
    ]),
    Row("Latency", [
        Panel("Task duration p95, by role",
              "histogram_quantile(0.95, sum by (le, role) "
              f'(rate(ccaa_task_duration_seconds_bucket{{role=~"$role"}}[{RATE}])))',
              unit="s", legend="{{role}}",
              description="From a task's creation to its end: waits and retries included."),
        Panel("Attempt duration p50, by role and kind",
              "histogram_quantile(0.5, sum by (le, role, kind) "
              f'(rate(ccaa_attempt_duration_seconds_bucket{{role=~"$role"}}[{RATE}])))',
              unit="s", legend="{{role}} {{kind}}",
              description="One attempt as its agent ran it."),
        Panel("Bus request latency p99, by type",
              "histogram_quantile(0.99, sum by (le, type) "
              f"(rate(ccaa_request_seconds_bucket[{RATE}])))", unit="s", legend="{{type}}"),
    ]),
    Row("Quality", [
        Panel("Gate pass rate, by gate (1h)",
              'sum by (gate) (increase(ccaa_gate_results_total{result="passed"}[1h])) / '
              '(sum by (gate) (increase(ccaa_gate_results_total{result=~"passed|failed"}[1h]))'
              " > 0)", unit="percentunit", legend="{{gate}}",
              description="Of the gate runs that gave a verdict (a missing tool is left out)."),
        Panel("Gate results (1h)",
              "sum by (gate, result) (increase(ccaa_gate_results_total[1h]))",
              kind="bargauge", legend="{{gate}} {{result}}"),
        Panel("Review verdicts (1h)", "sum by (verdict) (increase(ccaa_reviews_total[1h]))",
              kind="bargauge", legend="{{verdict}}"),
        Panel("Attempts by outcome (1h)",
              "sum by (outcome) (increase(ccaa_agent_attempts_total"
              '{host=~"$host", peer_role=~"$role"}[1h]))', kind="bargauge",
              legend="{{outcome}}"),
        Panel("Error replies per second, by code",
              f"sum by (code) (rate(ccaa_hub_errors_total[{RATE}]))", legend="{{code}}"),
    ]),
    Row("Cost", [
        # totals, not rates: a (role, model) series appears with its first cost, and rate()
        # cannot see the increase that created it
        Panel("Cost so far, by role", 'sum by (role) (ccaa_cost_usd_total{role=~"$role"})',
              unit="currencyUSD", kind="bargauge", legend="{{role}}",
              description="Since the orchestrator started."),
        Panel("Cost so far, by model", "sum by (model) (ccaa_cost_usd_total)",
              unit="currencyUSD", kind="bargauge", legend="{{model}}",
              description="Since the orchestrator started."),
        Panel("Tokens so far, by model and type", "sum by (model, type) (ccaa_tokens_total)",
              kind="bargauge", legend="{{model}} {{type}}",
              description="Since the orchestrator started."),
        Panel("Budget spent, by running session",
              "max by (session) (ccaa_session_budget_used_ratio)", unit="percentunit",
              kind="bargauge", legend="{{session}}",
              description="Alert CcaaBudgetNearlySpent fires at 80%."),
        Panel("Time since a change, by running session",
              "max by (session) (ccaa_session_idle_seconds)", unit="s", kind="bargauge",
              legend="{{session}}", description="Alert CcaaSessionStalled fires past 30 min."),
    ]),
    Row("Agents", [
        Panel("Agents by host and role",
              'count by (host, peer_role) (up{peer_kind="agent", host=~"$host", '
              'peer_role=~"$role"} == 1)', kind="bargauge", legend="{{host}} {{peer_role}}"),
        Panel("Agents running a task, by host",
              'sum by (host) (ccaa_agent_running{host=~"$host", peer_role=~"$role"})',
              legend="{{host}}"),
        Panel("Agent processes, by role", 'sum by (role) (ccaa_pool_agents{role=~"$role"})',
              legend="{{role}}", description="Kept alive by each host's controller."),
        Panel("Agents lost (1h)",
              'sum(increase(ccaa_hub_peers_lost_total{kind="agent"}[1h]))', kind="stat"),
        Panel("Agent restarts, by role (1h)",
              'sum by (role) (increase(ccaa_pool_restarts_total{role=~"$role"}[1h]))',
              kind="bargauge", legend="{{role}}"),
        Panel("Work waiting with no agent, by role",
              "sum by (role) (ccaa_queue_without_agents)", legend="{{role}}",
              description="Alert CcaaWorkWaitingWithoutAgents fires after two minutes."),
    ]),
]


def panels() -> list[Panel]:
    return [p for row in ROWS for p in row.panels]


def _variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ALL,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def dashboard() -> dict:
    out, y, pid = [], 0, 1
    for row in ROWS:
        out.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y = 0, y + 8
            out.append({
                "id": pid, "type": p.kind, "title": p.title, "description": p.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": p.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [{"refId": "A", "datasource": DATASOURCE, "expr": p.expr,
                             "legendFormat": p.legend}]})
            pid, x = pid + 1, x + p.width
        y += 8
    return {
        "uid": "ccaa-overview", "title": "ccaa overview", "tags": ["ccaa"],
        "schemaVersion": 39, "version": 2, "refresh": "10s", "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            _variable("host", "host", 'label_values(up{job="ccaa"}, host)'),
            _variable("role", "agent role", 'label_values(up{peer_kind="agent"}, peer_role)'),
        ]},
        "panels": out,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.dashboard",
                                     description="Print the Grafana dashboard, or rewrite "
                                                 f"{OUT.name} with --write.")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        OUT.write_text(render())
        print(f"wrote {OUT}")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
