"""What a utility agent's ``gate`` executor is asked to run (the prompt of a gate task,
as JSON) and what it reports back (``TaskResult.data["gate"]``).

Kinds: ``exit_code`` passes on exit 0; ``threshold`` extracts a figure with ``pattern``
and checks ``min``/``max``; ``new_findings`` runs the command on the branch and on
``compare_to`` (the base commit, in a worktree of its own) and passes when the branch has
no finding the base lacks, so legacy findings do not block work; ``no_drop`` extracts the
figure on both and passes when the branch's is at least the base's; ``test_first`` proves a
fix: the test files the branch adds or changes must fail on the base commit (run there with
the branch's versions of those files) and pass on the branch (``{tests}`` in the command
is replaced by those files); ``improvement`` runs a benchmark on the base and on the branch,
interleaved, ``rounds`` times each, and passes only when the branch's median is better by
``min_improvement`` and by more than the runs' noise (the figure is ``pattern``'s, or the
command's wall time; ``better`` says which way is better); ``no_removals`` runs on both and
passes when every line the base's output has is still in the branch's (e.g. a package's
public API, one name and signature a line: additions are fine). A command whose tool is
missing (``requires``, or the shell's exit 127) is reported not available: neither a pass
nor a failure of the work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

GateKind = Literal["exit_code", "threshold", "new_findings", "no_drop", "test_first",
                   "improvement", "no_removals"]
#: a test file, by path: tests/ or test/ or __tests__/ directories, test_*.py, *_test.py,
#: *_test.go, *.test.js/ts, *.spec.js/ts
TEST_FILE = (r"(^|/)(tests?|__tests__|spec)/|(^|/)test_[^/]*\.py$|_test\.(py|go)$"
             r"|\.(test|spec)\.[cm]?[jt]sx?$")
#: exit codes of a test command that prove nothing (pytest: usage error, no tests; the
#: shell: command not found)
NOT_A_PROOF = (4, 5, 127)

#: a finding line: ``path:line[:col]: message`` (ruff concise, go vet, eslint -f unix,
#: bandit with the custom template the detection sets, mypy, ...)
FINDING = r"^(?P<path>[^\s:][^:]*):(?P<line>\d+)(?::\d+)?:\s*(?P<message>.+)$"


class GateRun(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: GateKind = "exit_code"
    command: str = Field(min_length=1)
    #: executables, or ``python:<module>``, the command needs; missing: not available
    requires: list[str] = []
    pattern: str = ""  # threshold: one group, the figure
    min: float | None = None
    max: float | None = None
    finding: str = FINDING  # new_findings: one finding per matching output line
    compare_to: str = Field(default="", pattern=r"^([0-9a-f]{40})?$")
    test_files: str = TEST_FILE  # test_first: which changed files are tests
    rounds: int = Field(5, ge=1, le=50)  # improvement: runs on each side
    min_improvement: float = Field(0.05, ge=0)  # improvement: relative, 0.05 = 5%
    better: Literal["lower", "higher"] = "lower"
    timeout: float = Field(900.0, gt=0)


class GateFigures(BaseModel):
    """``TaskResult.data["gate"]``: what the gate executor measured."""

    name: str
    kind: GateKind
    command: str
    available: bool = True
    missing: list[str] = []  # what was not installed
    exit_code: int | None = None
    seconds: float = 0.0
    value: float | None = None  # threshold, no_drop: the figure on the branch
    base_value: float | None = None  # no_drop: the figure on the base commit
    base_exit_code: int | None = None
    base_seconds: float = 0.0
    findings: int | None = None  # new_findings: on the branch
    base_findings: int | None = None
    new: list[str] = []  # findings the branch has and the base lacks (at most 50 shown)
    new_count: int = 0
    output_head: str = ""  # the first lines of the branch run's output
    tests: list[str] = []  # test_first: the test files the branch adds or changes
    samples: list[float] = []  # improvement: the branch's figures, run by run
    base_samples: list[float] = []
    improvement: float | None = None  # relative, positive = better
    removed: list[str] = []  # no_removals: lines of the base's output the branch lacks
    removed_count: int = 0
    noise: float | None = None  # relative half-range: each side's runs, the rounds' differences
    base_output_head: str = ""  # test_first: how those tests failed on the base
