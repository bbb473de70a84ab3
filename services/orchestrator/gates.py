"""Quality gates: which apply to a repository, and whether a gate's run passed."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from libs.config import GateConfig
from protocols.gate import NOT_A_PROOF, GateFigures, GateRun

PROJECT_FILE = ".ccaa.toml"
#: how far a no_drop figure may fall below the base's (rounding in tools' output)
NO_DROP_TOLERANCE = 0.01


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


def gate_run(name: str, gate: GateConfig, compare_to: str = "") -> GateRun:
    """What the utility agent's gate executor is asked to run for ``gate``."""
    return GateRun(name=name, kind=gate.kind, command=gate.command, requires=gate.requires,
                   pattern=gate.pattern, min=gate.min, max=gate.max, timeout=gate.timeout,
                   compare_to=compare_to, rounds=gate.rounds,
                   min_improvement=gate.min_improvement, better=gate.better)


@dataclass
class Verdict:
    passed: bool
    detail: str
    value: float | None = None
    available: bool = True  # False: the tool is not installed where it ran (no verdict)


def evaluate(gate: GateConfig, result: dict[str, Any]) -> Verdict:
    """Judge a gate's task result: the gate executor's figures when it ran it, else the
    exit code and output tails (a gate run by a plain command)."""
    code = result.get("exit_code")
    outcome = result.get("outcome")
    if outcome in ("timed_out", "cancelled"):
        return Verdict(False, f"gate {outcome}")
    figures = (result.get("data") or {}).get("gate")
    if isinstance(figures, dict):
        try:
            return judge(gate, GateFigures.model_validate(figures))
        except ValidationError as exc:
            return Verdict(False, f"the gate's figures are malformed: {exc}"[:300])
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


def judge(gate: GateConfig, f: GateFigures) -> Verdict:
    """The verdict on what the gate executor measured."""
    if not f.available:
        return Verdict(True, f"not available: {', '.join(f.missing)} missing "
                             f"(would run: {f.command})", available=False)
    code = f.exit_code
    if f.kind == "test_first":
        return _test_first(f)
    if f.kind == "improvement":
        return _improvement(gate, f)
    if f.kind == "no_removals":
        if code != 0 or f.base_exit_code not in (0, None):
            return Verdict(False, f"exit code {code} (base {f.base_exit_code})")
        if f.removed_count:
            return Verdict(False, f"{f.removed_count} item(s) of the base are gone: "
                                  + "; ".join(f.removed[:5]), float(f.removed_count))
        return Verdict(True, "nothing the base had is gone", 0.0)
    if f.kind == "exit_code":
        return Verdict(code == 0, f"exit code {code}")
    if f.kind == "new_findings":
        counts = (f"{f.findings} on the branch, {f.base_findings} on the base"
                  if f.base_findings is not None else f"{f.findings} on the branch")
        if code not in (0, None) and not f.findings:
            return Verdict(False, f"exit code {code} and no findings in its output")
        if f.new_count:
            listed = "; ".join(f.new[:5])
            return Verdict(False, f"{f.new_count} new finding(s) ({counts}): {listed}"[:1000],
                           float(f.new_count))
        return Verdict(True, f"no new findings ({counts})", 0.0)
    value = f.value
    if value is None:
        return Verdict(False, f"no figure matched {gate.pattern!r} in the output "
                              f"(exit code {code})")
    if gate.min is not None and value < gate.min:
        return Verdict(False, f"{value:g} is below the minimum {gate.min:g}", value)
    if gate.max is not None and value > gate.max:
        return Verdict(False, f"{value:g} is above the maximum {gate.max:g}", value)
    if f.kind == "no_drop":
        if f.base_value is None:
            return Verdict(True, f"{value:g} (the base commit gave no figure)", value)
        if value + NO_DROP_TOLERANCE < f.base_value:
            return Verdict(False, f"dropped from {f.base_value:g} on the base to {value:g}",
                           value)
        return Verdict(True, f"{value:g}, base {f.base_value:g}: no drop", value)
    return Verdict(True, f"{value:g} within bounds", value)


def _test_first(f: GateFigures) -> Verdict:
    if not f.tests:
        return Verdict(False, "the change adds or changes no test: a fix must come with a "
                              "test that fails without it")
    named = ", ".join(f.tests[:5])
    if f.exit_code != 0:
        return Verdict(False, f"its tests ({named}) fail on the branch (exit {f.exit_code})")
    if f.base_exit_code == 0:
        return Verdict(False, f"its tests ({named}) also pass on the base commit: they do "
                              "not show the problem the change fixes")
    if f.base_exit_code in NOT_A_PROOF or f.base_exit_code is None:
        return Verdict(False, f"its tests ({named}) did not run on the base commit "
                              f"(exit {f.base_exit_code}), so they prove nothing")
    return Verdict(True, f"{named}: fail on the base (exit {f.base_exit_code}), pass on the "
                         "branch")


#: a gain must be this many times the runs' noise to count
NOISE_FACTOR = 2.0


def _improvement(gate: GateConfig, f: GateFigures) -> Verdict:
    if f.improvement is None or f.value is None or f.base_value is None:
        return Verdict(False, f"the benchmark measured nothing (exit code {f.exit_code}, "
                              f"base {f.base_exit_code})")
    unit = "s" if not gate.pattern else ""
    figures = (f"median {f.value:g}{unit} vs {f.base_value:g}{unit} on the base, "
               f"{f.improvement:+.1%} ({gate.better} is better), noise {f.noise:.1%}, "
               f"{len(f.samples)} runs each")
    noise = NOISE_FACTOR * (f.noise or 0.0)
    if f.improvement < -noise:
        return Verdict(False, f"regression: {figures}", f.improvement)
    if f.improvement < gate.min_improvement:
        return Verdict(False, f"no improvement of {gate.min_improvement:.0%}: {figures}",
                       f.improvement)
    if f.improvement <= noise:
        return Verdict(False, f"the gain is within the noise: {figures}", f.improvement)
    return Verdict(True, f"faster: {figures}" if gate.better == "lower"
                   else f"better: {figures}", f.improvement)
