"""Toolchain detection picks the gate commands a repository's ecosystem calls for, and the
judge reads what the gate executor measured."""

from __future__ import annotations

import json

import pytest

from libs.config import GateConfig
from protocols.gate import GateFigures
from services.agent.executors.gate import compare
from services.orchestrator.gates import judge
from services.orchestrator.toolchain import detect, resolve

pytestmark = pytest.mark.timeout(30)

AUTO = {n: GateConfig(command="auto") for n in ("tests", "coverage", "lint", "security",
                                                "benchmark")}


def make(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_python(tmp_path):
    found = detect(make(tmp_path, {"pkg/__init__.py": ""}))
    assert found.names == ["python"]
    g = found.gates
    assert g["tests"].command.startswith("python -m pytest")
    assert "python:pytest" in g["tests"].requires
    assert g["coverage"].kind == "no_drop" and "python:pytest_cov" in g["coverage"].requires
    assert g["lint"].kind == "new_findings" and g["lint"].requires == ["ruff"]
    assert g["security"].command.startswith("bandit") and g["security"].kind == "new_findings"
    assert "benchmark" not in g
    assert g["test_first"].kind == "test_first" and "{tests}" in g["test_first"].command


def test_node_uses_its_own_scripts_and_skips_npms_placeholder(tmp_path):
    pkg = {"scripts": {"test": "jest", "lint": "eslint -f unix .", "bench": "node bench.js"}}
    found = detect(make(tmp_path, {"package.json": json.dumps(pkg), "package-lock.json": "{}"}))
    assert found.names == ["node"]
    assert {k: v.command for k, v in found.gates.items()} == {
        "tests": "npm test --silent", "test_first": "npm test --silent",
        "lint": "npm run lint --silent",
        "benchmark": "npm run bench --silent",
        "security": "npm audit --omit=dev --audit-level=high"}
    placeholder = {"scripts": {"test": 'echo "Error: no test specified" && exit 1'}}
    (tmp_path / "package.json").write_text(json.dumps(placeholder))
    assert "tests" not in detect(str(tmp_path)).gates


def test_go_and_rust(tmp_path):
    go = detect(make(tmp_path / "g", {"go.mod": "module x\n"}))
    assert go.gates["tests"].command == "go test ./..." and go.gates["lint"].kind == "new_findings"
    rust = detect(make(tmp_path / "r", {"Cargo.toml": "[package]\nname='x'\n"}))
    assert rust.gates["tests"].command == "cargo test --quiet"
    assert rust.gates["lint"].command.startswith("cargo clippy")


def test_make_and_just_targets_win_over_the_languages_defaults(tmp_path):
    found = detect(make(tmp_path, {"setup.py": "", "Makefile": "VAR := 1\ntest: build\n\tpytest\n"
                                                            "bench:\n\t./bench\n"}))
    assert found.names == ["python", "make"]
    assert found.gates["tests"].command == "make test"
    assert found.gates["benchmark"].command == "make bench"
    assert found.gates["lint"].command.startswith("ruff")  # no lint target: the language's
    just = detect(make(tmp_path / "j", {"justfile": "lint *args:\n  ruff check\n"}))
    assert just.gates["lint"].command == "just lint"


def test_resolution_keeps_what_was_set_and_empties_what_nothing_provides(tmp_path):
    repo = make(tmp_path, {"pyproject.toml": ""})
    gates = {**AUTO, "coverage": GateConfig(command="auto", min=85, timeout=60),
             "tests": GateConfig(command="make check")}
    resolved, found = resolve(repo, gates)
    assert resolved["tests"].command == "make check"  # set by the operator or .ccaa.toml
    assert resolved["coverage"].kind == "no_drop" and resolved["coverage"].min == 85
    assert resolved["coverage"].timeout == 60 and resolved["coverage"].pattern
    assert resolved["benchmark"].command == ""  # nothing to run: skipped and reported
    empty, found = resolve(make(tmp_path / "nothing", {"notes.txt": "hi"}), AUTO)
    assert found.names == [] and all(g.command == "" for g in empty.values())


def figures(**kw) -> GateFigures:
    return GateFigures(name="lint", kind="new_findings", command="ruff check .", **kw)


def test_the_judge_of_each_kind():
    lint = GateConfig(kind="new_findings")
    assert judge(lint, figures(exit_code=1, findings=3, base_findings=3)).passed
    v = judge(lint, figures(exit_code=1, findings=4, base_findings=3, new_count=1,
                            new=["a.py: F401 `os` imported but unused"]))
    assert not v.passed and "a.py: F401" in v.detail
    # a crash is not "no findings"
    assert not judge(lint, figures(exit_code=2, findings=0, base_findings=0)).passed
    gone = judge(lint, figures(available=False, missing=["ruff"]))
    assert gone.passed and not gone.available and "would run: ruff check ." in gone.detail
    cov = GateConfig(kind="no_drop", pattern="x")
    f = GateFigures(name="coverage", kind="no_drop", command="c", exit_code=0)
    assert not judge(cov, f.model_copy(update={"value": 80.0, "base_value": 82.0})).passed
    assert judge(cov, f.model_copy(update={"value": 82.0, "base_value": 82.0})).passed
    assert judge(cov, f.model_copy(update={"value": 70.0})).passed  # no figure on the base
    assert not judge(cov, f).passed  # no figure on the branch
    floor = GateConfig(kind="no_drop", pattern="x", min=75)
    assert not judge(floor, f.model_copy(update={"value": 70.0, "base_value": 60.0})).passed


def test_an_improvement_must_clear_the_minimum_and_the_noise():
    bench = GateConfig(kind="improvement")
    f = GateFigures(name="benchmark", kind="improvement", command="make bench", exit_code=0,
                    base_exit_code=0, value=0.8, base_value=1.0, samples=[0.8] * 3,
                    base_samples=[1.0] * 3)
    assert judge(bench, f.model_copy(update={"improvement": 0.2, "noise": 0.01})).passed
    noisy = judge(bench, f.model_copy(update={"improvement": 0.06, "noise": 0.04}))
    assert not noisy.passed and "within the noise" in noisy.detail
    small = judge(bench, f.model_copy(update={"improvement": 0.03, "noise": 0.0}))
    assert not small.passed and "no improvement of 5%" in small.detail
    worse = judge(bench, f.model_copy(update={"improvement": -0.1, "noise": 0.01}))
    assert not worse.passed and worse.detail.startswith("regression")
    assert not judge(bench, GateFigures(name="b", kind="improvement", command="x")).passed


def measured(base: list[float], branch: list[float], better: str = "lower") -> GateFigures:
    f = GateFigures(name="benchmark", kind="improvement", command="make bench", exit_code=0,
                    base_exit_code=0, samples=branch, base_samples=base)
    compare(f, better)
    return f


def test_the_noise_is_what_the_runs_spread_not_how_close_two_of_them_are():
    bench = GateConfig(kind="improvement")
    # two of the base's three runs slowed by a load, two of the branch's not: the medians
    # differ by 10% while the closest two runs of each side are within 1%
    f = measured([0.266, 0.268, 0.236], [0.240, 0.238, 0.262])
    assert f.improvement == pytest.approx(0.0977, abs=1e-4)
    # the rounds' differences (0.026, 0.030, -0.026) spread wider than either side
    assert f.noise == pytest.approx((0.030 + 0.026) / 2 / 0.266, abs=1e-4)
    assert not judge(bench, f).passed
    # each side's runs agree, but the rounds disagree on which side is faster
    f = measured([1.0, 1.1, 1.0, 1.1], [1.1, 1.0, 1.0, 1.0])
    assert f.noise == pytest.approx(0.1 / 1.05, abs=1e-4)
    # a real gain, runs that agree: it passes, higher is better too
    assert judge(bench, measured([0.20, 0.21, 0.20], [0.10, 0.11, 0.10])).passed
    assert judge(GateConfig(kind="improvement", better="higher"),
                 measured([100, 102, 101], [150, 149, 152], better="higher")).passed
