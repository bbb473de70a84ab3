"""Which gate commands a repository calls for, from its files: what a user of that
ecosystem would run. A gate configured as ``auto`` (the default) takes the command found
here; the operator's configuration and the repository's ``.ccaa.toml`` override it.

- Python (pyproject.toml, setup.py, setup.cfg, requirements*.txt, or Python modules or
  packages at the top): pytest (the whole suite; for a fix, the tests it adds or changes
  on the base and on the branch), coverage via
  pytest-cov (no drop versus the base commit), ruff and bandit (no new findings), and the
  packages' public API (names and signatures; nothing of the base's may go).
- Node (package.json): its ``test``, ``lint`` and ``bench`` scripts; ``npm audit`` with a
  lockfile.
- Go (go.mod): ``go test ./...``, ``go vet ./...`` (no new findings).
- Rust (Cargo.toml): ``cargo test``, ``cargo clippy``.
- Make / just: targets named test, lint, bench take precedence (the project's own way).

A benchmark gate compares the branch with the base commit (``improvement``: its wall time,
or the figure a ``pattern`` set in .ccaa.toml extracts).

A tool that is not installed where the gate runs makes the gate "not available" (see
``requires``), never a pass and never a failure of the work."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from libs.config import AUTO, GateConfig

COVERAGE = r"TOTAL.*?(\d+(?:\.\d+)?)%"
NPM_PLACEHOLDER = "no test specified"


@dataclass
class Toolchain:
    names: list[str] = field(default_factory=list)  # e.g. ["python", "make"]
    gates: dict[str, GateConfig] = field(default_factory=dict)


#: prints a Python project's public API, one ``package.name(signature)`` a line: the
#: packages at the top (or under src/), their ``__all__`` or public names, modules left out
PY_API = """
import importlib, inspect, os, sys
top = "src" if os.path.isdir("src") else "."
sys.path.insert(0, os.path.abspath(top))
skip = {"tests", "test", "docs", "examples", "benchmarks"}
for pkg in sorted(os.listdir(top)):
    if pkg in skip or not os.path.isfile(os.path.join(top, pkg, "__init__.py")):
        continue
    try:
        mod = importlib.import_module(pkg)
    except Exception as exc:
        print(f"{pkg}: cannot be imported: {type(exc).__name__}")
        continue
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(mod, name, None)
        if inspect.ismodule(obj):
            continue
        try:
            sig = str(inspect.signature(obj)) if callable(obj) else ""
        except (TypeError, ValueError):
            sig = ""
        print(f"{pkg}.{name}{sig}")
"""


def _python(root: Path) -> dict[str, GateConfig]:
    return {
        "api": GateConfig(command=f"python -c {shlex.quote(PY_API)}", kind="no_removals",
                          requires=["python"]),
        "tests": GateConfig(command="python -m pytest -q -p no:cacheprovider",
                            requires=["python", "python:pytest"]),
        "test_first": GateConfig(command="python -m pytest -q -p no:cacheprovider {tests}",
                                 kind="test_first", requires=["python", "python:pytest"]),
        "coverage": GateConfig(
            command="python -m pytest -q -p no:cacheprovider --cov=. --cov-report=term",
            kind="no_drop", pattern=COVERAGE, requires=["python", "python:pytest_cov"]),
        "lint": GateConfig(command="ruff check --output-format=concise --no-cache .",
                           kind="new_findings", requires=["ruff"]),
        "security": GateConfig(
            command="bandit -q -r . -x ./tests,./.git -f custom "
                    "--msg-template '{relpath}:{line}: {test_id} {msg}'",
            kind="new_findings", requires=["bandit"]),
    }


def _node(root: Path) -> dict[str, GateConfig]:
    try:
        scripts = json.loads((root / "package.json").read_text()).get("scripts") or {}
    except (OSError, ValueError, AttributeError):
        scripts = {}
    gates: dict[str, GateConfig] = {}
    test = scripts.get("test")
    if isinstance(test, str) and NPM_PLACEHOLDER not in test:
        gates["tests"] = GateConfig(command="npm test --silent", requires=["npm"])
        gates["test_first"] = GateConfig(command="npm test --silent", kind="test_first",
                                         requires=["npm"])
    if isinstance(scripts.get("lint"), str):
        gates["lint"] = GateConfig(command="npm run lint --silent", requires=["npm"])
    if isinstance(scripts.get("bench"), str):
        gates["benchmark"] = GateConfig(command="npm run bench --silent", kind="improvement",
                                        requires=["npm"])
    if (root / "package-lock.json").is_file():
        gates["security"] = GateConfig(command="npm audit --omit=dev --audit-level=high",
                                       requires=["npm"])
    return gates


def _go(root: Path) -> dict[str, GateConfig]:
    return {"tests": GateConfig(command="go test ./...", requires=["go"]),
            "test_first": GateConfig(command="go test ./...", kind="test_first",
                                     requires=["go"]),
            "lint": GateConfig(command="go vet ./...", kind="new_findings", requires=["go"])}


def _rust(root: Path) -> dict[str, GateConfig]:
    return {"tests": GateConfig(command="cargo test --quiet", requires=["cargo"]),
            "test_first": GateConfig(command="cargo test --quiet", kind="test_first",
                                     requires=["cargo"]),
            "lint": GateConfig(command="cargo clippy --quiet -- -D warnings",
                               requires=["cargo", "cargo-clippy"])}


def _targets(text: str, pattern: str) -> set[str]:
    return {m.group(1) for m in re.finditer(pattern, text, re.MULTILINE)}


def _task_runner(tool: str, files: tuple[str, ...], pattern: str
                 ) -> tuple[Callable[[Path], bool], Callable[[Path], dict[str, GateConfig]]]:
    """A detector for a task runner whose file lists targets (make, just): whether the
    repository has the file, and the gates its targets give."""
    def present(root: Path) -> bool:
        return any((root / f).is_file() for f in files)

    def gates_of(root: Path) -> dict[str, GateConfig]:
        for name in files:
            path = root / name
            if path.is_file():
                return _by_target(_targets(path.read_text(errors="replace"), pattern), tool,
                                  [tool])
        return {}
    return present, gates_of


def _by_target(targets: set[str], tool: str, requires: list[str]) -> dict[str, GateConfig]:
    gates = {}
    for gate, target in (("tests", "test"), ("lint", "lint"), ("benchmark", "bench")):
        if target in targets:
            gates[gate] = GateConfig(command=f"{tool} {target}", requires=requires,
                                     kind="improvement" if gate == "benchmark" else "exit_code")
    return gates


DETECTORS = (
    ("python", lambda r: any((r / f).is_file() for f in ("pyproject.toml", "setup.py",
                                                          "setup.cfg", "requirements.txt"))
     or any(r.glob("requirements*.txt")) or any(r.glob("*.py"))
     or any(r.glob("*/__init__.py")), _python),
    ("node", lambda r: (r / "package.json").is_file(), _node),
    ("go", lambda r: (r / "go.mod").is_file(), _go),
    ("rust", lambda r: (r / "Cargo.toml").is_file(), _rust),
    # the project's own targets last: they win over the language's defaults
    ("make", *_task_runner("make", ("GNUmakefile", "makefile", "Makefile"),
                           r"^([A-Za-z][\w-]*)\s*:(?!=)")),
    ("just", *_task_runner("just", ("justfile", "Justfile", ".justfile"),
                           r"^@?([A-Za-z][\w-]*)[^:\n]*:")),
)


def detect(repo: str) -> Toolchain:
    root = Path(repo)
    found = Toolchain()
    for name, present, gates_of in DETECTORS:
        if present(root):
            gates = gates_of(root)
            found.names.append(name)
            found.gates.update(gates)
    return found


def resolve(repo: str, gates: dict[str, GateConfig]) -> tuple[dict[str, GateConfig], Toolchain]:
    """``gates`` with every ``auto`` command replaced by the toolchain's (or emptied: no
    command for this repository, so the gate is skipped and reported as such). A setting
    given beside ``auto`` (a timeout, a minimum) is kept."""
    found = detect(repo)
    plain = GateConfig().model_dump()
    out = {}
    for name, gate in gates.items():
        if gate.command != AUTO:
            out[name] = gate
            continue
        detected = found.gates.get(name)
        if detected is None:
            out[name] = gate.model_copy(update={"command": ""})
            continue
        given = {k: v for k, v in gate.model_dump().items()
                 if k != "command" and v != plain[k]}
        out[name] = detected.model_copy(update=given)
    return out, found
