"""The who of a submit is its actor's newest registration, also as the actor registers
again, and never a registration whose write was undone (the lookup is cached)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.orchestrator_world import World

pytestmark = pytest.mark.timeout(30)


def whos(w: World, action: str) -> list[str]:
    """As written (a query names a record written before its registration later)."""
    return [r[0] for r in w.store.conn.execute(
        "SELECT who FROM audit WHERE action=? ORDER BY id", (action,))]


def test_a_submit_is_named_by_the_newest_registration_not_an_undone_one(tmp_path):
    async def go():
        w = World(tmp_path)
        try:
            audit = w.orch.audit
            audit.add("submit", "cli-1", session_id="s0")  # none yet
            audit.add("register", "cli-1", who="alice@box")
            audit.add("submit", "cli-1", session_id="s1")
            audit.add("register", "cli-1", who="key bob")  # registered again, another key
            audit.add("submit", "cli-1", session_id="s2")
            with pytest.raises(RuntimeError):
                with w.store.tx():
                    audit.add("register", "cli-1", who="key eve")
                    audit.add("submit", "cli-1", session_id="undone")
                    raise RuntimeError("the handler failed: its writes are undone")
            audit.add("submit", "cli-1", session_id="s3")
            assert whos(w, "submit") == ["", "alice@box", "key bob", "key bob"]
            audit.prune(float("inf"))  # every registration gone
            audit.add("submit", "cli-1", session_id="s4")
            assert whos(w, "submit") == [""]
        finally:
            w.close()
            w.store.close()

    asyncio.run(go())
