"""Classify a free-text command into a command type, with the reason recorded.

Keyword scoring: each type has cue words; the type with the most cues in the text wins,
ties broken by the order below. No cue at all falls back to IMPLEMENT_FEATURE, and the
reason says so.
"""

from __future__ import annotations

import re

from protocols.command import CommandType

CUES: dict[CommandType, tuple[str, ...]] = {
    CommandType.FIX_ISSUES: ("fix", "bug", "broken", "error", "crash", "fails", "failing",
                             "issue", "regression", "exception"),
    CommandType.OPTIMIZE_PERFORMANCE: ("optimize", "optimise", "performance", "faster", "speed",
                                       "slow", "latency", "throughput", "memory", "profile"),
    CommandType.REFACTOR_CODE: ("refactor", "restructure", "clean up", "cleanup", "rename",
                                "extract", "simplify", "reorganize", "reorganise", "split"),
    CommandType.ANALYZE_PROJECT: ("analyze", "analyse", "analysis", "review", "audit",
                                  "explain", "document", "understand", "assess", "report"),
    CommandType.IMPLEMENT_FEATURE: ("implement", "add", "feature", "create", "build",
                                    "support", "new", "write", "introduce"),
}


def classify(text: str) -> tuple[CommandType, str]:
    lowered = text.lower()
    best: tuple[int, CommandType, list[str]] | None = None
    for type_, cues in CUES.items():
        hits = [c for c in cues if re.search(rf"\b{re.escape(c)}", lowered)]
        if hits and (best is None or len(hits) > best[0]):
            best = (len(hits), type_, hits)
    if best is None:
        return CommandType.IMPLEMENT_FEATURE, "no cue words found; defaulted to IMPLEMENT_FEATURE"
    _, type_, hits = best
    return type_, f"cue words {', '.join(repr(h) for h in hits)} matched {type_.value}"
