"""Command classification: cue words per type, most cues wins, ties by order, default."""

from __future__ import annotations

import pytest

from protocols.command import CommandType
from services.commands.classify import CUES, classify

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("text, expected", [
    ("Fix the login bug", CommandType.FIX_ISSUES),
    ("The parser crashes with an exception on empty input", CommandType.FIX_ISSUES),
    ("tests are failing since the last regression", CommandType.FIX_ISSUES),
    ("Optimize the query, it is too slow", CommandType.OPTIMIZE_PERFORMANCE),
    ("reduce latency and improve throughput", CommandType.OPTIMIZE_PERFORMANCE),
    ("Refactor the module and rename the helpers", CommandType.REFACTOR_CODE),
    ("please clean up and simplify utils.py", CommandType.REFACTOR_CODE),
    ("Analyze the project and review its architecture", CommandType.ANALYZE_PROJECT),
    ("Explain how the scheduler works", CommandType.ANALYZE_PROJECT),
    ("Implement a CSV export", CommandType.IMPLEMENT_FEATURE),
    ("Create a new endpoint for users", CommandType.IMPLEMENT_FEATURE),
])
def test_cue_words_pick_the_type(text, expected):
    type_, reason = classify(text)
    assert type_ == expected
    assert expected.value in reason and "cue words" in reason


@pytest.mark.parametrize("type_", list(CUES))
def test_every_cue_word_alone_selects_its_type(type_):
    for cue in CUES[type_]:
        got, reason = classify(f"please {cue.upper()} it")
        assert got == type_, (cue, got, reason)
        assert repr(cue) in reason


def test_reason_lists_every_matched_cue():
    type_, reason = classify("Fix the bug: it crashes with an error")
    assert type_ == CommandType.FIX_ISSUES
    for cue in ("fix", "bug", "crash", "error"):
        assert repr(cue) in reason


def test_more_cues_win_over_order():
    # FIX_ISSUES comes first, but optimize has more cues here
    type_, _ = classify("optimize performance, it is slow; fix later")
    assert type_ == CommandType.OPTIMIZE_PERFORMANCE


@pytest.mark.parametrize("text, expected", [
    ("fix the slow path", CommandType.FIX_ISSUES),  # fix 1 vs optimize 1
    ("make it faster and rename things", CommandType.OPTIMIZE_PERFORMANCE),  # 1 vs refactor 1
    ("refactor then review", CommandType.REFACTOR_CODE),  # 1 vs analyze 1
    ("review and implement", CommandType.ANALYZE_PROJECT),  # 1 vs implement 1
])
def test_ties_are_broken_by_the_declared_order(text, expected):
    assert classify(text)[0] == expected


def test_cues_match_at_word_starts_only():
    # "prefix" contains "fix" but not at a word start; "fixes" starts with "fix"
    assert classify("update the prefix table")[0] == CommandType.IMPLEMENT_FEATURE
    assert "no cue words" in classify("update the prefix table")[1]
    assert classify("fixes for windows")[0] == CommandType.FIX_ISSUES


@pytest.mark.parametrize("text", ["hello", "do the thing with the widget", "   ", "12345"])
def test_no_cue_defaults_to_implement_feature_with_a_reason(text):
    type_, reason = classify(text)
    assert type_ == CommandType.IMPLEMENT_FEATURE
    assert reason == "no cue words found; defaulted to IMPLEMENT_FEATURE"


def test_run_is_never_chosen_by_classification():
    assert CommandType.RUN not in CUES
