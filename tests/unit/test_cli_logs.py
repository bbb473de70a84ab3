"""`ccaa logs` on files: the last lines read from the end, JSON log lines made readable,
and following a file through both kinds of rotation (renamed and made anew; copied and
truncated, as the controller does with agents' logs)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from services.cli import logs


def test_last_lines_reads_from_the_end_of_a_long_file(tmp_path):
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))  # several 64 KB blocks
    assert logs.last_lines(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert logs.last_lines(path, 0) == []
    short = tmp_path / "short.log"
    short.write_text("only\n")
    assert logs.last_lines(short, 10) == ["only"]
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert logs.last_lines(empty, 10) == []


def test_json_lines_are_made_readable_and_other_lines_kept():
    line = json.dumps({"ts": "2026-12-04T06:00:00.000Z", "level": "warning",
                       "service": "hub", "event": "peer.lost", "name": "agent-1",
                       "why": "no heartbeat for 3 s", "n": 2})
    assert logs.pretty(line) == ("2026-12-04T06:00:00.000Z warning hub peer.lost "
                                 'name=agent-1 why="no heartbeat for 3 s" n=2')
    assert logs.pretty("plain text from supervisord") == "plain text from supervisord"
    assert logs.pretty('["a list"]') == '["a list"]'
    with_exc = json.dumps({"ts": "t", "level": "error", "service": "s", "event": "boom",
                           "exc": "Traceback ...\nValueError: x"})
    assert logs.pretty(with_exc).endswith("boom\nTraceback ...\nValueError: x")


def follow_until(path, wanted: int, write) -> list[str]:
    """Follow ``path`` while ``write`` runs in a thread; stop once ``wanted`` lines came
    (or after a deadline, failing)."""
    got: list[str] = []
    deadline = time.monotonic() + 20
    writer = threading.Thread(target=write, args=(got,))

    def stop() -> bool:
        if not writer.is_alive() and writer.ident is None:
            writer.start()  # once the follower is at the file's end
        assert time.monotonic() < deadline, f"only {got} after 20 s"
        return len(got) >= wanted

    logs.follow_file(path, got.append, stop=stop)
    writer.join(5)
    return got


def append(path, *lines: str) -> None:
    with open(path, "a") as f:
        for line in lines:
            f.write(line + "\n")
            f.flush()


@pytest.mark.timeout(30)
def test_follow_prints_what_is_appended_and_no_older_lines(tmp_path):
    path = tmp_path / "svc.log"
    append(path, "old 1", "old 2")
    got = follow_until(path, 3, lambda _got: append(path, "new 1", "new 2", "new 3"))
    assert got == ["new 1", "new 2", "new 3"]


@pytest.mark.timeout(30)
def test_follow_goes_on_after_a_copy_and_truncate_rotation(tmp_path):
    path = tmp_path / "agent.log"
    append(path, "before " + "x" * 100)

    def write(got):
        append(path, "a" * 200)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # the follower has read it
            time.sleep(0.01)  # wait-ok: polling the follower's output under a deadline
        with open(path, "r+") as f:  # copytruncate: the same file, its size back to 0
            f.truncate(0)
        append(path, "after")  # shorter than what was read: only a size check sees it

    got = follow_until(path, 2, write)
    assert got == ["a" * 200, "after"]


@pytest.mark.timeout(30)
def test_follow_goes_on_after_a_rename_rotation(tmp_path):
    path = tmp_path / "svc.log"
    append(path, "first")

    def write(_got):
        append(path, "one")
        os.rename(path, tmp_path / "svc.log.1")
        append(path, "two", "three")  # a new file at the old name

    got = follow_until(path, 3, write)
    assert got == ["one", "two", "three"]
