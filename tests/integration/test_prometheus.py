"""A real Prometheus (Debian's package) scrapes a live stack (`ccaa up`) through the
shipped scrape config while a workload runs: a planned session (plan, parallel work, a
gate that fails once, reviews, merge) whose scripted agents report cost, RUN sessions that
succeed and fail, one that runs on, one that waits for a role nobody runs. Then every
dashboard expression and every alert rule's expression is evaluated, and each must give
what the workload implies, counted independently (the state database, the registry)."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml

from deploy import dashboard
from tests.conftest import ROOT, _alive, tools_or_skip
from tests.integration.test_node import free_ports
from tests.integration.test_workflow_scripted import SCRIPT, make_repo

CONFIG = """
data_dir = "@DATA@"
[communication]
router_endpoint = "ipc://@TMP@/hub.sock"
pub_endpoint = "ipc://@TMP@/pub.sock"
sub_endpoint = "ipc://@TMP@/sub.sock"
heartbeat_interval = 0.3
[orchestrator]
retry_attempts = 0
max_parallel_tasks = 8
[metrics.ports]
hub = @HUB_METRICS@
commands = 0
orchestrator = 0
distributor = 0
controller = 0
[reporting]
http_port = @REPORTER@
[agent_hierarchy.architect]
count = 1
executor = "command"
command = @AGENT@
env_passthrough = ["SCRIPTED_*"]
[agent_hierarchy.manager]
count = 1
executor = "command"
command = @AGENT@
env_passthrough = ["SCRIPTED_*"]
[agent_hierarchy.worker]
count = 2
executor = "command"
command = @AGENT@
env_passthrough = ["SCRIPTED_*"]
[agent_hierarchy.utility]
count = 2
executor = "command"
[agent_hierarchy.spare]
count = 0
executor = "command"
"""
ROLES = {"architect": 1, "manager": 1, "worker": 2, "utility": 2, "spare": 0}
#: the dashboard's variables with every value chosen, and a rate window over the workload
VARIABLES = {"$__rate_interval": "10m", "$host": dashboard.ALL, "$role": dashboard.ALL}


class Prom:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[tuple[dict, float]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", (expr, body)
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [({k: v for k, v in s["metric"].items() if k != "__name__"},
                 float(s["value"][1])) for s in data["result"]]

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {m.get(label, ""): v for m, v in self.query(expr)}

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as r:
            return json.loads(r.read())["data"]


def wait_until(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except (OSError, AssertionError, KeyError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)  # wait-ok: polling Prometheus and the CLI under a deadline


def one(results: list[tuple[dict, float]]) -> float:
    assert len(results) == 1, results
    return results[0][1]


@pytest.fixture
def stack(tmp_path, procs):
    tools_or_skip("prometheus")
    hub_metrics, reporter, prom_port = free_ports(3)
    agent = json.dumps([sys.executable, str(SCRIPT), "{prompt}"])
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.replace("@DATA@", str(tmp_path / "data"))
                      .replace("@TMP@", str(tmp_path)).replace("@AGENT@", agent)
                      .replace("@HUB_METRICS@", str(hub_metrics))
                      .replace("@REPORTER@", str(reporter)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), SCRIPTED_COST="1")

    def ccaa(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args,
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)

    # the shipped scrape config and rules, pointed at this stack, scraping every second
    text = (ROOT / "deploy" / "prometheus.yml").read_text()
    text = (text.replace("127.0.0.1:8780", f"127.0.0.1:{reporter}")
            .replace("127.0.0.1:9450", f"127.0.0.1:{hub_metrics}")
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
            .replace("refresh_interval: 10s", "refresh_interval: 1s")
            .replace("prometheus/*.yml", str(ROOT / "deploy" / "prometheus" / "*.yml")))
    assert text.count("1s") >= 3
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(text)

    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    tree: list[int] = []
    try:
        up = ccaa("up")
        assert up.returncode == 0, up.stdout + up.stderr
        supervisord = psutil.Process(int(pidfile.read_text()))
        tree = [supervisord.pid] + [c.pid for c in supervisord.children(recursive=True)]
        procs.start("prometheus", [
            "prometheus", f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        wait_until("Prometheus to scrape every service",
                   lambda: one(prom.query('count(up{peer_kind="service"} == 1)')) == 6)
        # some history before the workload, so increase() has little to extrapolate
        wait_until("twenty seconds of samples", lambda: one(prom.query(
            'count_over_time(up{job="ccaa-hub"}[1h])')) >= 20)
        yield ccaa, prom, tmp_path
    finally:
        ccaa("down")
        for pid in [p for p in tree if _alive(p)]:
            os.kill(pid, 9)


def ground_truth(db: Path) -> dict:
    conn = sqlite3.connect(db)
    tasks = conn.execute("SELECT kind, role, state, meta FROM tasks").fetchall()
    attempts = [json.loads(r[0]) for r in conn.execute(
        "SELECT result FROM attempts WHERE result != '{}'")]
    role_of = dict(conn.execute("SELECT id, role FROM tasks").fetchall())
    cost: Counter[str] = Counter()
    cost_by_role: Counter[str] = Counter()
    tokens: Counter[tuple[str, str]] = Counter()
    for result in attempts:
        for model, usage in ((result.get("data") or {}).get("model_usage") or {}).items():
            cost[model] += usage["costUSD"]
            cost_by_role[role_of[result["task_id"]]] += usage["costUSD"]
            tokens[(model, "input")] += usage["inputTokens"]
            tokens[(model, "output")] += usage["outputTokens"]
    gates: Counter[tuple[str, str]] = Counter()
    for kind, _, state, meta in tasks:
        if kind in ("gate", "final_gate") and state in ("succeeded", "failed"):
            gates[(json.loads(meta)["gate"], "passed" if state == "succeeded" else "failed")] += 1
    return {
        "sessions": Counter(s for (s,) in conn.execute("SELECT state FROM sessions")),
        "tasks": Counter(t[2] for t in tasks),
        "ended_kinds": {t[0] for t in tasks if t[2] in ("succeeded", "failed")},
        "ended_roles": {t[1] for t in tasks if t[2] in ("succeeded", "failed")},
        "reviews": Counter(json.loads(t[3]).get("review_verdict") for t in tasks
                           if t[0] == "review"),
        "outcomes": Counter(r["outcome"] for r in attempts),
        "cost": cost,
        "cost_by_role": cost_by_role,
        "tokens": tokens,
        "gates": gates,
        "running": {sid for (sid,) in conn.execute(
            "SELECT id FROM sessions WHERE state = 'running'")},
    }


def approx(value: float, expected: float) -> bool:
    """increase() extrapolates to its window's end: a little over (the test waits for
    twenty seconds of samples first, so well under a quarter)."""
    return expected <= value + 1e-9 and value <= expected * 1.25 + 1e-9


@pytest.mark.timeout(360)
def test_every_dashboard_expression_and_alert_gives_what_the_workload_implies(stack):
    ccaa, prom, tmp_path = stack
    repo = tmp_path / "repo"
    make_repo(repo)

    planned = ccaa("submit", "IMPLEMENT_FEATURE", "Create alpha, beta and gamma files",
                   "--repo", str(repo), "--wait", "--wait-timeout", "150", timeout=200)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr
    ok = ccaa("submit", "RUN", "true", "--role", "utility", "--repo", str(repo), "--wait")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for _ in range(2):
        bad = ccaa("submit", "RUN", "exit 3", "--role", "utility", "--repo", str(repo),
                   "--wait")
        assert bad.returncode != 0 and "failed" in bad.stdout, bad.stdout + bad.stderr
    slow = ccaa("submit", "RUN", "sleep 300", "--role", "utility", "--budget", "5",
                "--repo", str(repo))
    slow_id = slow.stdout.split()[1]
    waiting = ccaa("submit", "RUN", "true", "--role", "spare", "--repo", str(repo))
    assert slow.returncode == 0 and waiting.returncode == 0, slow.stderr + waiting.stderr
    wait_until("the long task to run", lambda: "running" in ccaa("show", slow_id).stdout)

    truth = ground_truth(tmp_path / "data" / "orchestrator.db")
    assert truth["sessions"] == {"succeeded": 2, "failed": 2, "running": 2}
    assert truth["tasks"]["queued"] == 1 and truth["tasks"]["running"] == 1
    registry = json.loads(ccaa("status", "--json").stdout)
    agents = Counter(p["role"] for p in registry["peers"] if p["kind"] == "agent")
    services = [p for p in registry["peers"] if p["kind"] == "service"]

    # Prometheus has caught up with the end of the workload
    wait_until("the last scrapes", lambda: (
        prom.by("sum by (state) (ccaa_sessions)", "state").get("running") == 2
        and one(prom.query("sum(ccaa_agent_running)")) == 1
        and prom.by("sum by (role) (ccaa_queue_without_agents)", "role").get("spare") == 1))

    def finite(results) -> dict[str, float]:
        return {json.dumps(m, sort_keys=True): v for m, v in results if math.isfinite(v)}

    checks = {
        "Services up": lambda r: one(r) == 6,
        "Services not answering": lambda r: one(r) == 0,
        "State database": lambda r: one(r) == 1,
        "Peers registered, by kind": lambda r: (
            dict((m["kind"], v) for m, v in r)["service"] == len(services)
            and dict((m["kind"], v) for m, v in r)["agent"] == sum(agents.values())),
        "Memory (RSS) by service": lambda r: len(r) == 6 and all(v > 10e6 for _, v in r),
        "CPU by service": lambda r: len(r) == 6 and all(v >= 0 for _, v in r),
        "Sessions finished per minute, by state": lambda r: (
            {m["state"] for m, v in r if v > 0} == {"succeeded", "failed"}
            and {m["state"] for m, _ in r} == {"succeeded", "failed", "partial", "cancelled"}),
        "Tasks ended per minute, by kind": lambda r: (
            {m["kind"] for m, v in r if v > 0} == truth["ended_kinds"]),
        "Queue depth": lambda r: one(r) == truth["tasks"]["queued"],
        "Sessions now, by state": lambda r: (
            {m["state"]: v for m, v in r if v} == dict(truth["sessions"])),
        "Tasks now, by state": lambda r: {m["state"]: v for m, v in r if v} == dict(
            truth["tasks"]),
        "Hub messages routed per second": lambda r: one(r) > 0,
        "Task duration p95, by role": lambda r: (
            {json.loads(k)["role"] for k in finite(r)} == truth["ended_roles"]),
        "Attempt duration p50, by role and kind": lambda r: {
            (json.loads(k)["role"], json.loads(k)["kind"]) for k in finite(r)} >= {
            ("architect", "plan"), ("worker", "work"), ("manager", "review"),
            ("utility", "gate"), ("utility", "final_gate"), ("utility", "run")},
        "Bus request latency p99, by type": lambda r: len(finite(r)) > 0,
        "Gate pass rate, by gate (1h)": lambda r: {m["gate"]: round(v, 6) for m, v in r} == {
            g: round(truth["gates"][(g, "passed")] / (truth["gates"][(g, "passed")]
                                                       + truth["gates"][(g, "failed")]), 6)
            for g, _ in truth["gates"]},
        "Gate results (1h)": lambda r: all(
            approx(v, truth["gates"][(m["gate"], m["result"])]) for m, v in r
        ) and {(m["gate"], m["result"]) for m, v in r if v} == set(truth["gates"]),
        "Review verdicts (1h)": lambda r: all(
            approx(v, truth["reviews"][m["verdict"]]) for m, v in r)
            and truth["reviews"]["approve"] == 3,
        "Attempts by outcome (1h)": lambda r: all(
            approx(v, truth["outcomes"][m["outcome"]]) for m, v in r)
            and {m["outcome"] for m, v in r if v} == set(truth["outcomes"]),
        "Error replies per second, by code": lambda r: len(r) > 10 and all(
            v >= 0 for _, v in r),
        "Cost so far, by role": lambda r: {m["role"]: round(v, 9) for m, v in r} == {
            k: round(v, 9) for k, v in truth["cost_by_role"].items()},
        "Cost so far, by model": lambda r: {m["model"]: round(v, 9) for m, v in r} == {
            k: round(v, 9) for k, v in truth["cost"].items()}
            and set(truth["cost"]) == {"scripted-planner", "scripted-coder",
                                       "scripted-reviewer"},
        "Tokens so far, by model and type": lambda r: {
            (m["model"], m["type"]): v for m, v in r} == dict(truth["tokens"]),
        "Budget spent, by running session": lambda r: {m["session"]: v for m, v in r} == {
            slow_id: 0.0},
        "Time since a change, by running session": lambda r: (
            {m["session"] for m, _ in r} == truth["running"]
            and all(0 <= v < 600 for _, v in r)),
        "Agents by host and role": lambda r: {
            m["peer_role"]: v for m, v in r if m["host"] == socket.gethostname()} == {
            role: n for role, n in agents.items()},
        "Agents running a task, by host": lambda r: (
            {m["host"]: v for m, v in r} == {socket.gethostname(): 1.0}),
        "Agent processes, by role": lambda r: {m["role"]: v for m, v in r} == {
            role: float(n) for role, n in ROLES.items()},
        "Agents lost (1h)": lambda r: one(r) == 0,  # a series even before the first loss
        "Agent restarts, by role (1h)": lambda r: (
            {m["role"] for m, _ in r} == set(ROLES) and all(v == 0 for _, v in r)),
        "Work waiting with no agent, by role": lambda r: {
            m["role"]: v for m, v in r if v} == {"spare": 1.0},
    }
    panels = dashboard.panels()
    assert {p.title for p in panels} == set(checks), "every panel has a check, and only those"
    wrong = {}
    for p in panels:
        expr = p.expr
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        result = prom.query(expr)
        if not checks[p.title](result):
            wrong[p.title] = (expr, result)
    assert not wrong, json.dumps(wrong, indent=1, default=str)

    # every alert rule: loaded, healthy, and its expression says what the workload implies
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    loaded = {r["name"]: r["health"] for g in prom.api("/api/v1/rules")["groups"]
              for r in g["rules"]}
    assert loaded == {name: "ok" for name in exprs}
    firing = {name: prom.query(expr) for name, expr in exprs.items()}
    expected_quiet = set(exprs) - {"CcaaWorkWaitingWithoutAgents", "CcaaSessionFailureRatio"}
    assert {n: r for n, r in firing.items() if n in expected_quiet and r} == {}
    assert [(m["role"], v) for m, v in firing["CcaaWorkWaitingWithoutAgents"]] == [
        ("spare", 1.0)]
    assert 0.45 < one(firing["CcaaSessionFailureRatio"]) < 0.55  # 2 of 4 sessions failed

    # the target labels keep their own names: nothing was renamed exported_*
    labels = prom.api("/api/v1/labels")
    assert not [name for name in labels if name.startswith("exported_")], labels
    assert {"peer", "peer_kind", "peer_role", "host"} <= set(labels)
