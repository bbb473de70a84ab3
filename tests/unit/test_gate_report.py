"""Gate runs in the session report and in `ccaa show`: command, time, figures base vs
branch, and the first lines of output of a failure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.cli.views import gate_lines
from services.orchestrator.report import gate_entry

pytestmark = pytest.mark.timeout(30)


def task(state: str, meta: dict, gate: dict) -> SimpleNamespace:
    return SimpleNamespace(meta=meta, title="gate lint: divide", key="divide:lint", state=state,
                           kind="gate", result={"data": {"gate": gate}})


def test_a_failed_comparing_gate_shows_base_beside_branch_and_its_output():
    entry = gate_entry(task("failed", {"gate": "lint", "verdict": "1 new finding(s)"}, {
        "name": "lint", "kind": "new_findings", "command": "ruff check .", "seconds": 0.4,
        "exit_code": 1, "findings": 2, "base_findings": 1, "base_seconds": 0.3, "new_count": 1,
        "new": ["extra.py: F401 `sys` imported but unused"],
        "output_head": "extra.py:1:8: F401 `sys` imported but unused\nFound 2 errors."}))
    assert entry["command"] == "ruff check ." and entry["findings"] == 2
    assert entry["base_findings"] == 1 and entry["new"] == ["extra.py: F401 `sys` imported "
                                                            "but unused"]
    assert entry["output_head"].startswith("extra.py:1:8")
    text = "\n".join(gate_lines(entry))
    assert "failed" in text and "$ ruff check ." in text and "base 1  branch 2" in text
    assert "new: extra.py: F401" in text and "| Found 2 errors." in text


def test_a_passed_gate_keeps_its_output_out_and_not_available_says_so():
    passed = gate_entry(task("succeeded", {"gate": "tests", "verdict": "exit code 0"},
                             {"command": "pytest", "seconds": 1.0, "exit_code": 0,
                              "output_head": "3 passed"}))
    assert "output_head" not in passed and passed["available"]
    gone = gate_entry(task("succeeded", {"gate": "security", "not_available": True,
                                         "verdict": "not available: bandit missing"},
                           {"command": "bandit -r .", "missing": ["bandit"]}))
    assert gone["available"] is False and gone["missing"] == ["bandit"]
    assert " n/a " in gate_lines(gone)[0]
