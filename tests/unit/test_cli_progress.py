"""Progress on long waits: lines when the output is not a terminal (unchanged for scripts
and logs), a live bar when it is."""

from __future__ import annotations

import io
import re

from services.cli.progress import Counter


def test_lines_off_a_terminal_one_per_change():
    out = io.StringIO()  # not a terminal
    c = Counter("ended", 10, out)
    c.update(0, "none yet")
    c.update(0, "none yet")  # no change, no line
    c.update(3, "2 failed, 1 succeeded")
    c.close(10, "10 succeeded")  # the caller says how it ended: no repeated line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d 0/10 ended \(none yet\)", lines[0])
    assert lines[1].endswith(" 3/10 ended (2 failed, 1 succeeded)")
    assert "\x1b[" not in out.getvalue()


def test_a_bar_on_a_terminal_ends_full():
    out = io.StringIO()
    c = Counter("ended", 10, out, live=True)
    c.update(3, "3 succeeded")
    c.close(10, "9 succeeded, 1 failed")
    text = out.getvalue()
    assert "\x1b[" in text  # drawn in place, with terminal control sequences
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "10/10" in plain and "9 succeeded, 1 failed" in plain
    assert "━" in plain  # the bar itself
