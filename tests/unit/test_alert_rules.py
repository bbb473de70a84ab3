"""The alert rules and the scrape config that ship in deploy/ are valid for Prometheus,
and every alert has a unit test (`promtool test rules`) that makes it fire and keeps it
quiet."""

from __future__ import annotations

import subprocess

import yaml

from tests.conftest import ROOT, tools_or_skip

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "deploy" / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tools_or_skip("promtool")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_the_scrape_config_and_its_rules_are_valid():
    checked = promtool("check", "config", "deploy/prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "9 rules found" in checked.stdout


def test_every_alert_fires_and_stays_quiet_as_its_unit_test_says():
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_unit_test_that_fires_it():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    fired = {case["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == fired, f"alerts never fired by a test: {sorted(alerts - fired)}"


def test_a_broken_rule_is_caught(tmp_path):
    """The check can fail: promtool refuses an expression that does not parse."""
    broken = tmp_path / "broken_rules.yml"
    broken.write_text(RULES.read_text().replace("ccaa_store_ok == 0", "ccaa_store_ok == ("))
    checked = promtool("check", "rules", str(broken))
    assert checked.returncode != 0 and "parse error" in (checked.stdout + checked.stderr)
