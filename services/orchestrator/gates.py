"""Quality gates: which apply to a repository, and whether a gate's run passed."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from libs.config import GateConfig

PROJECT_FILE = ".ccaa.toml"


class GateConfigError(ValueError):
    pass


def project_gates(repo: str, defaults: dict[str, GateConfig]) -> dict[str, GateConfig]:
    """The system's gates, overridden by the repository's ``.ccaa.toml`` ``[gates.<name>]``."""
    gates = {k: v.model_copy() for k, v in defaults.items()}
    path = Path(repo) / PROJECT_FILE
    if not path.is_file():
        return gates
    try:
        raw = tomllib.loads(path.read_text()).get("gates", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GateConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise GateConfigError(f"{path}: [gates] must be a table")
    for name, table in raw.items():
        try:
            base = gates[name].model_dump() if name in gates else {}
            gates[name] = GateConfig.model_validate({**base, **table})
        except (ValidationError, TypeError) as exc:
            raise GateConfigError(f"{path}: gate {name!r}: {exc}") from None
    return gates


@dataclass
class Verdict:
    passed: bool
    detail: str
    value: float | None = None


def evaluate(gate: GateConfig, result: dict[str, Any]) -> Verdict:
    """Judge a gate's task result (exit code and output tails)."""
    code = result.get("exit_code")
    outcome = result.get("outcome")
    if outcome in ("timed_out", "cancelled"):
        return Verdict(False, f"gate {outcome}")
    if gate.kind == "exit_code":
        if code == 0:
            return Verdict(True, "exit code 0")
        return Verdict(False, f"exit code {code}")
    output = f"{result.get('stdout', '')}\n{result.get('stderr', '')}"
    matches = re.findall(gate.pattern, output) if gate.pattern else []
    if not matches:
        return Verdict(False, f"no value matched {gate.pattern!r} in the output "
                              f"(exit code {code})")
    last = matches[-1]
    value = float(last[0] if isinstance(last, tuple) else last)
    if gate.min is not None and value < gate.min:
        return Verdict(False, f"{value:g} is below the minimum {gate.min:g}", value)
    if gate.max is not None and value > gate.max:
        return Verdict(False, f"{value:g} is above the maximum {gate.max:g}", value)
    return Verdict(True, f"{value:g} within bounds", value)
