"""An agent's log is rotated by copy and truncate (the agent keeps its file open for
appending), keeping a bounded number of old copies."""

from __future__ import annotations

import os

from services.controller.pool import rotate_log


def test_a_log_past_its_size_is_copied_and_truncated_keeping_three(tmp_path):
    path = tmp_path / "agent-worker-h-1.log"
    with open(path, "ab") as writer:  # as the agent holds it: opened for appending
        for generation in range(5):
            writer.write(f"generation {generation}\n".encode() * 20)
            writer.flush()
            assert rotate_log(str(path), max_bytes=100, keep=3)
        writer.write(b"after\n")
        writer.flush()
    assert path.read_bytes() == b"after\n"  # the agent's next write lands at the start
    assert (tmp_path / "agent-worker-h-1.log.1").read_text().startswith("generation 4")
    assert (tmp_path / "agent-worker-h-1.log.3").read_text().startswith("generation 2")
    assert not (tmp_path / "agent-worker-h-1.log.4").exists()


def test_a_small_or_missing_log_is_left_alone(tmp_path):
    path = tmp_path / "a.log"
    assert not rotate_log(str(path), max_bytes=100)
    path.write_text("short\n")
    assert not rotate_log(str(path), max_bytes=100)
    assert os.listdir(tmp_path) == ["a.log"]
