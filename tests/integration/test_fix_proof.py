"""FIX_ISSUES end to end with the scripted agent CLI: a fix without a test is sent back by
the test_first gate, and the fix that adds a test failing on the base commit is merged."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import session_state, wait_for
from tests.integration.test_workflow_scripted import git, start_stack


def make_buggy_repo(path: Path) -> str:
    (path / "tests").mkdir(parents=True)
    (path / "pyproject.toml").write_text('[project]\nname = "m"\nversion = "0"\n')
    (path / "mul.py").write_text("def mul(a, b):\n    return a + b\n")
    (path / "tests" / "test_other.py").write_text("def test_nothing():\n    assert True\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return git(path, "rev-parse", "HEAD").strip()


@pytest.mark.timeout(150)
def test_a_fix_without_a_failing_test_is_sent_back_until_it_has_one(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    base = make_buggy_repo(repo)
    start_stack(procs, bus, {"SCRIPTED_FIX": "1"})

    async def go():
        async with BusClient(bus.comm()) as client:
            accepted = await client.request("commands", CommandSubmit(
                text="Fix the bug: mul(3, 4) returns 7", repo=str(repo),
                type=CommandType.FIX_ISSUES))
            sid = accepted.body.session_id

            async def done():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None

            return await wait_for(done, 120, "the session to finish", interval=0.1)

    st = asyncio.run(go())
    assert st.session.state.value == "succeeded", (st.session.detail, [
        (t.kind, t.key, t.state.value, t.meta.get("verdict")) for t in st.tasks])
    [fix] = [t for t in st.tasks if t.kind == "work"]
    proofs = [t for t in st.tasks if t.kind == "gate" and t.meta.get("gate") == "test_first"]
    # first round: no test, refused with that reason; second: the test fails on the base
    assert [p.state.value for p in proofs] == ["failed", "succeeded"]
    assert "adds or changes no test" in proofs[0].meta["verdict"]
    assert "tests/test_mul.py: fail on the base" in proofs[1].meta["verdict"]
    assert fix.attempt == 2 and any("test_first" in f for f in fix.meta["feedback"])
    branch = st.session.report["branch"]
    assert "a * b" in git(repo, "show", f"{branch}:mul.py")
    assert "mul(3, 4) == 12" in git(repo, "show", f"{branch}:tests/test_mul.py")
    assert subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", base, branch]
                          ).returncode == 0
    gates = {g["key"]: g for g in st.session.report["gates"]}
    assert gates["fix:test_first"]["base_exit_code"] == 1
