"""Plans, templates and gates: the pure parts of the workflow engine."""

from __future__ import annotations

import json

import pytest

from libs.config import GateConfig
from services.orchestrator.gates import GateConfigError, evaluate, project_gates
from services.orchestrator.plan import PlanError, parse_plan, topological_order
from services.orchestrator.templates import TemplateError, load_templates

pytestmark = pytest.mark.timeout(30)


def plan_text(subtasks, fenced=True):
    body = json.dumps({"summary": "s", "subtasks": subtasks})
    return f"Here it is:\n```json\n{body}\n```\nthanks" if fenced else f"plan: {body} end"


def st(id_, deps=(), role="worker"):
    return {"id": id_, "title": id_, "prompt": f"do {id_}", "depends_on": list(deps),
            "role": role}


def test_plan_parses_from_a_fence_or_bare_and_orders_the_dag():
    for fenced in (True, False):
        plan = parse_plan(plan_text([st("c", ["a", "b"]), st("a"), st("b", ["a"])], fenced))
        assert [s.id for s in plan.subtasks] == ["c", "a", "b"]
        assert topological_order(plan) == ["a", "b", "c"]


@pytest.mark.parametrize("subtasks, message", [
    ([], "no subtasks"),
    ([st("a", ["zz"])], "unknown subtasks: zz"),
    ([st("a"), st("a")], "duplicate subtask ids: a"),
    ([st("a", ["a"])], "depends on itself"),
    ([st("a", ["b"]), st("b", ["c"]), st("c", ["a"])], "cycle: a -> b -> c -> a"),
    ([st("a", role="janitor")], "unknown role 'janitor'"),
])
def test_bad_plans_are_rejected_with_a_reason(subtasks, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        parse_plan(plan_text(subtasks), roles={"worker", "manager"})


def test_unreadable_plans_say_why():
    with pytest.raises(PlanError, match="no JSON object"):
        parse_plan("I could not make a plan")
    with pytest.raises(PlanError, match="not valid JSON"):
        parse_plan("```json\n{\"subtasks\": [1,}\n```")
    with pytest.raises(PlanError, match="schema.*subtasks.0.prompt"):
        parse_plan(plan_text([{"id": "a", "title": "t"}]))
    with pytest.raises(PlanError, match="schema.*id"):
        parse_plan(plan_text([{"id": "bad id!", "title": "t", "prompt": "p"}]))


def test_builtin_templates_cover_every_command_type():
    from protocols.command import CommandType

    templates = load_templates()
    assert set(templates) == {t.value for t in CommandType}
    feature = templates["IMPLEMENT_FEATURE"]
    assert feature.plan is not None and feature.work.review is not None
    assert feature.gates == ["tests", "lint", "coverage", "security"] and feature.merge
    assert templates["ANALYZE_PROJECT"].cache and templates["RUN"].single is not None
    assert "benchmark" in templates["OPTIMIZE_PERFORMANCE"].final_gates


def test_user_templates_override_and_bad_ones_are_clear(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "type: FIX_ISSUES\nsingle: {role: worker, kind: run}\nmerge: false\n")
    assert load_templates(str(tmp_path))["FIX_ISSUES"].single is not None
    (tmp_path / "bad.yaml").write_text("type: X\n")
    with pytest.raises(TemplateError, match="exactly one of `single` or `plan`"):
        load_templates(str(tmp_path))
    with pytest.raises(TemplateError, match="does not exist"):
        load_templates(str(tmp_path / "nope"))


def test_gate_verdicts():
    exit_gate = GateConfig(command="make test")
    assert evaluate(exit_gate, {"exit_code": 0, "outcome": "succeeded"}).passed
    v = evaluate(exit_gate, {"exit_code": 2, "outcome": "failed"})
    assert not v.passed and v.detail == "exit code 2"
    assert not evaluate(exit_gate, {"exit_code": None, "outcome": "timed_out"}).passed
    cov = GateConfig(command="cov", kind="threshold", pattern=r"TOTAL.*?(\d+)%", min=80)
    out = "name  stmts\nTOTAL   120   8   93%\n"
    v = evaluate(cov, {"exit_code": 0, "stdout": out})
    assert v.passed and v.value == 93
    v = evaluate(cov, {"exit_code": 0, "stdout": out.replace("93%", "71%")})
    assert not v.passed and "below the minimum 80" in v.detail
    bench = GateConfig(command="b", kind="threshold", pattern=r"regression ([\d.]+)%", max=5)
    assert not evaluate(bench, {"exit_code": 0, "stderr": "regression 7.5%"}).passed
    assert "no value matched" in evaluate(bench, {"exit_code": 0, "stdout": "?"}).detail


def test_project_gates_override_the_defaults(tmp_path):
    defaults = {"tests": GateConfig(command="pytest"), "lint": GateConfig(command="ruff")}
    (tmp_path / ".ccaa.toml").write_text(
        '[gates.tests]\ncommand = "make check"\n[gates.coverage]\ncommand = "cov"\n'
        'kind = "threshold"\npattern = "(\\\\d+)%"\nmin = 90\n')
    gates = project_gates(str(tmp_path), defaults)
    assert gates["tests"].command == "make check" and gates["lint"].command == "ruff"
    assert gates["coverage"].min == 90
    (tmp_path / ".ccaa.toml").write_text("[gates.tests]\nkind = \"nope\"\n")
    with pytest.raises(GateConfigError, match="gate 'tests'"):
        project_gates(str(tmp_path), defaults)
    (tmp_path / ".ccaa.toml").write_text("[gates\n")
    with pytest.raises(GateConfigError, match=".ccaa.toml"):
        project_gates(str(tmp_path), defaults)
