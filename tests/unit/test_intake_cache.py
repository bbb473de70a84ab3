"""Each repository's gates are read once and kept while its .ccaa.toml is unchanged: a
changed, added or broken file is seen by the next session."""

from __future__ import annotations

import json
import os

import pytest

from protocols import ProtocolError
from services.orchestrator.intake import GatesCache
from tests.unit.orchestrator_world import scenario


def stored_gates(w, sid: str) -> dict:
    return json.loads(w.store.session(sid)["gates"])


def test_sessions_store_the_gates_of_the_ccaa_toml_as_it_is_when_they_start(tmp_path):
    project = tmp_path / ".ccaa.toml"

    async def run(w):
        await w.create("s1")
        default = stored_gates(w, "s1")["tests"]["command"]
        project.write_text('[gates.tests]\ncommand = "make check"\n')
        await w.create("s2")
        assert stored_gates(w, "s2")["tests"]["command"] == "make check"
        project.write_text('[gates.tests]\ncommand = "make test-all"\n')
        os.utime(project, ns=(1, 1))  # same size or not, a new modification time
        await w.create("s3")
        assert stored_gates(w, "s3")["tests"]["command"] == "make test-all"
        project.unlink()
        await w.create("s4")
        assert stored_gates(w, "s4")["tests"]["command"] == default
        # a session's stored template is the configured one
        assert json.loads(w.store.session("s4")["template"])["type"] == "RUN"

    scenario(tmp_path, run)


def test_a_broken_ccaa_toml_is_refused_every_time_and_seen_once_fixed(tmp_path):
    from libs.config import SystemConfig

    cache = GatesCache(SystemConfig().gates)
    project = tmp_path / ".ccaa.toml"
    project.write_text("[gates\n")
    for _ in range(2):
        with pytest.raises(ProtocolError, match=".ccaa.toml"):
            cache.get(str(tmp_path))
    project.write_text('[gates.lint]\ncommand = "ruff check ."\n')
    gates, text = cache.get(str(tmp_path))
    assert gates["lint"].command == "ruff check ."
    assert json.loads(text)["lint"]["command"] == "ruff check ."
