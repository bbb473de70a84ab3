"""Each exit code means one thing, and every error code the bus can answer with maps to
the exit code a script would expect."""

from __future__ import annotations

from protocols import ErrorCode
from services.cli import exits
from tests.conftest import ROOT


def test_each_exit_code_has_one_meaning_and_is_documented():
    codes = [code for code, _ in exits.TABLE]
    assert len(codes) == len(set(codes))
    readme = (ROOT / "README.md").read_text()
    for code, _ in exits.TABLE:
        assert f"\n| {code} | " in readme, f"exit code {code} is not in README's table"


def test_error_codes_map_to_usage_refused_or_unreachable():
    assert exits.for_error(ErrorCode.VALIDATION_ERROR.value) == exits.USAGE
    assert exits.for_error(ErrorCode.NOT_FOUND.value) == exits.REFUSED
    assert exits.for_error(ErrorCode.INVALID_REQUEST.value) == exits.REFUSED
    assert exits.for_error(ErrorCode.UNAUTHORIZED.value) == exits.REFUSED
    assert exits.for_error(ErrorCode.UNDELIVERABLE.value) == exits.UNREACHABLE
    for code in ErrorCode:
        assert exits.for_error(code.value) in (exits.USAGE, exits.REFUSED, exits.UNREACHABLE)


def test_every_command_but_the_pass_throughs_and_the_demo_takes_json():
    import argparse

    from services.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    exempt = {"demo", "agent", "model-server", "claude"}
    missing = [name for name, p in sub.choices.items() if name not in exempt
               and "--json" not in p._option_string_actions]
    assert missing == []
