"""Putting a Claude Code session where `claude --resume` looks, from this host or from the
agent that ran it, or falling back to a fresh session with the previous report."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import pytest

from protocols.task import Transcript, TranscriptGet
from services.agent.executors import transcripts

pytestmark = pytest.mark.timeout(30)

SID = "66673461-7f69-428f-86ff-dc3eeb96cc61"
LINES = b'{"type": "user", "message": "remember BANANA"}\n'


def stored(config: Path, cwd: str) -> Path:
    path = transcripts.project_dir(config, cwd) / f"{SID}.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(LINES)
    return path


def restore(config: Path, cwd: str, prefer: str = "", fetch=None) -> transcripts.Restored:
    return asyncio.run(transcripts.restore(config, cwd, SID, prefer, "me", fetch))


def test_project_dirs_are_named_as_claude_code_names_them(tmp_path):
    assert transcripts.project_dir(tmp_path, "/tmp/pytest-1/test_x0/work").name == \
        "-tmp-pytest-1-test-x0-work"


def test_a_session_of_this_worktree_is_used_as_it_is(tmp_path):
    stored(tmp_path, "/w/one")
    assert restore(tmp_path, "/w/one").mode == "here"


def test_a_session_run_in_another_worktree_of_this_host_is_copied(tmp_path):
    stored(tmp_path, "/w/one")
    got = restore(tmp_path, "/w/two")
    assert got.mode == "copied" and got.resumes
    assert (transcripts.project_dir(tmp_path, "/w/two") / f"{SID}.jsonl").read_bytes() == LINES


def test_a_session_on_another_host_is_fetched_from_its_agent(tmp_path):
    other = tmp_path / "other-host"
    stored(other, "/w/one")
    asked = []

    async def fetch(agent: str, body: TranscriptGet) -> Transcript:
        asked.append((agent, body.session_id))
        return Transcript(session_id=body.session_id,
                          data=transcripts.pack(other, body.session_id))

    got = restore(tmp_path / "here", "/w/two", "agent-b-1", fetch)
    assert got.mode == "fetched" and asked == [("agent-b-1", SID)]
    target = transcripts.project_dir(tmp_path / "here", "/w/two") / f"{SID}.jsonl"
    assert target.read_bytes() == LINES and target.stat().st_mode & 0o777 == 0o600


def test_without_the_session_anywhere_it_falls_back_to_the_report(tmp_path):
    async def gone(agent: str, body: TranscriptGet) -> Transcript:
        raise ConnectionError("undeliverable: agent-b-1 is not registered")

    got = restore(tmp_path, "/w/two", "agent-b-1", gone)
    assert got.mode == "summary" and not got.resumes
    assert "could not be fetched from agent-b-1" in got.detail
    assert restore(tmp_path, "/w/two").mode == "summary"  # nobody to ask
    prompt = transcripts.fresh_prompt("Fix it.", "I changed a.py; tests still fail.", got.detail)
    assert prompt.startswith("Fix it.") and "I changed a.py" in prompt
    assert "cannot be resumed here" in prompt


def test_only_session_ids_are_served_never_paths(tmp_path):
    stored(tmp_path, "/w/one")
    (tmp_path / "secret.jsonl").write_text("no")
    assert transcripts.find(tmp_path, "../secret") is None
    with pytest.raises(FileNotFoundError):
        transcripts.pack(tmp_path, "../../secret")
    assert zlib.decompress(transcripts.pack(tmp_path, SID)) == LINES
