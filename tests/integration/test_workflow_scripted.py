"""The planned workflow end to end with real processes and a scripted agent CLI (the
command executor): plan -> parallel work in worktrees -> a failing gate sends one back ->
review -> merge in dependency order -> final gate -> report."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from libs.client import BusClient
from protocols.command import CommandSubmit, CommandType
from tests.integration.test_bus_flow import session_state, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "scripted_agent.py"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def make_repo(path: Path) -> str:
    path.mkdir()
    (path / "README.md").write_text("sample\n")
    (path / ".ccaa.toml").write_text(
        '[gates.tests]\ncommand = "! grep -rq broken --include=*.txt ."\n')
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return git(path, "rev-parse", "HEAD").strip()


def stack_args(bus) -> list[str]:
    """Service flags: architect, manager and worker run the scripted agent CLI."""
    agent_cmd = f'["{sys.executable}", "{SCRIPT}", "{{prompt}}"]'
    args = bus.args() + ["--set", "orchestrator.retry_attempts=0"]
    for role in ("architect", "manager", "worker"):
        args += ["--set", f"agent_hierarchy.{role}.command={agent_cmd}",
                 "--set", f'agent_hierarchy.{role}.executor="command"',
                 # the scripted agent reads its behaviour from these
                 "--set", f'agent_hierarchy.{role}.env_passthrough=["SCRIPTED_*", "CCAA_ROLE"]']
    return args


def start_stack(procs, bus, extra_env: dict[str, str] | None = None):
    args = stack_args(bus)
    for m in ("services.commands", "services.orchestrator", "services.distributor"):
        procs.ready(procs.service(m, *args))
    agents = [("architect", "arch-1"), ("manager", "mgr-1"), ("worker", "w-1"),
              ("worker", "w-2"), ("utility", "util-1")]
    for role, name in agents:
        proc = procs.start(name, [sys.executable, "-m", "services.agent", *args, "--role", role,
                                  "--name", name], env={"CCAA_ROLE": role, **(extra_env or {})})
        procs.ready(proc)


async def run_session(bus, repo: Path, timeout: float = 90):
    async with BusClient(bus.comm()) as client:
        accepted = await client.request("commands", CommandSubmit(
            text="Create alpha, beta and gamma files", repo=str(repo),
            type=CommandType.IMPLEMENT_FEATURE))
        sid = accepted.body.session_id

        async def done():
            st = await session_state(client, sid)
            return st if st.session.state.value != "running" else None

        return await wait_for(done, timeout, "the session to finish", interval=0.1)


@pytest.mark.timeout(150)
def test_plan_gates_review_merge(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    base = make_repo(repo)
    start_stack(procs, bus, {"SCRIPTED_CYCLE_FIRST": "1"})
    status = asyncio.run(run_session(bus, repo))
    st = status.session
    assert st.state.value == "succeeded", (st.detail, [(t.kind, t.key, t.state.value, t.meta.get("verdict")) for t in status.tasks])

    history = status.history
    kinds = [h["kind"] for h in history]
    assert "plan_rejected" in kinds and "plan_accepted" in kinds  # the cycle was re-asked
    rejected = next(h for h in history if h["kind"] == "plan_rejected")
    assert "cycle" in rejected["detail"]

    work = {t.key: t for t in status.tasks if t.kind == "work"}
    assert set(work) == {"a", "b", "c"}
    assert all(t.meta.get("accepted") for t in work.values())
    # b failed its gate once and was sent back with the gate's output
    assert work["b"].attempt == 2 and work["b"].meta["rounds"] == 1
    assert any("quality gate tests failed" in f for f in work["b"].meta["feedback"])
    sent_back = [h for h in history if h["task_id"] == work["b"].task_id
                 and h["to_state"] == "ready" and "sent back" in h["detail"]]
    assert len(sent_back) == 1
    # c ran once, after a and b were accepted, from both of their branches
    assert work["c"].attempt == 1
    accepted = {h["task_id"]: h["ts"] for h in history if h["kind"] == "accepted"}
    c_ready = next(h["ts"] for h in history if h["task_id"] == work["c"].task_id
                   and h["to_state"] == "ready")
    assert c_ready >= max(accepted[work["a"].task_id], accepted[work["b"].task_id])

    # the session branch has all three files, merged on top of the base commit
    report = st.report
    branch = report["branch"]
    assert branch == f"ccaa/{st.session_id}/result"
    files = git(repo, "ls-tree", "--name-only", branch).split()
    assert {"alpha.txt", "beta.txt", "gamma.txt"} <= set(files)
    assert git(repo, "show", f"{branch}:gamma.txt") == "alpha\nbeta\n"
    assert git(repo, "merge-base", "--is-ancestor", base, branch) == ""
    # the user's checkout is untouched
    assert not (repo / "alpha.txt").exists()
    assert git(repo, "rev-parse", "HEAD").strip() == base

    gates = report["gates"]
    final = [g for g in gates if g["kind"] == "final_gate"]
    assert final and final[0]["state"] == "succeeded"
    assert [g["state"] for g in gates if g["key"] == "b:tests"] == [
        "failed", "succeeded"]
    reviews = [t for t in status.tasks if t.kind == "review"]
    assert len(reviews) == 3 and all(r.state.value == "succeeded" for r in reviews)
    # each verdict is kept with its reasons
    assert sorted(r["key"] for r in report["reviews"]) == ["a:review", "b:review", "c:review"]
    assert all(r["verdict"] == "approve" and r["reasons"] == ["looks right"]
               and r["reviewer"] == "mgr-1" for r in report["reviews"])
    assert report["per_agent"] and report["wall_time_s"] > 0


@pytest.mark.timeout(150)
def test_a_worker_that_keeps_failing_escalates_to_a_manager(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    start_stack(procs, bus, {"SCRIPTED_FAIL_WORK": "c"})
    status = asyncio.run(run_session(bus, repo))
    assert status.session.state.value == "succeeded", status.session.detail
    c = next(t for t in status.tasks if t.kind == "work" and t.key == "c")
    assert c.role == "manager" and c.agent_id == "mgr-1"
    assert c.meta["escalations"] == ["manager"]
    trail = [(h["to_state"], h["detail"]) for h in status.history
             if h["task_id"] == c.task_id and h["kind"] == "task"]
    assert ("failed", "exit code 1") in trail
    assert ("ready", "escalated to manager") in trail
    assert trail[-1][0] == "succeeded"


@pytest.mark.timeout(150)
def test_a_merge_conflict_becomes_a_manager_task_that_resolves_it(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    start_stack(procs, bus, {"SCRIPTED_CONFLICT": "1"})
    status = asyncio.run(run_session(bus, repo))
    st = status.session
    assert st.state.value == "succeeded", st.detail
    conflicts = [h for h in status.history if h["kind"] == "merge_conflict"]
    assert len(conflicts) == 1 and "shared.txt" in conflicts[0]["detail"]
    (resolve,) = [t for t in status.tasks if t.kind == "resolve"]
    assert resolve.role == "manager" and resolve.state.value == "succeeded"
    branch = st.report["branch"]
    assert git(repo, "merge-base", "--is-ancestor", resolve.result["data"]["commit"],
               branch) == ""
    assert git(repo, "show", f"{branch}:shared.txt") == "left\nright\n"
    for t in status.tasks:
        if t.kind == "work":  # both sides are in the result
            assert git(repo, "merge-base", "--is-ancestor", t.result["data"]["commit"],
                       branch) == ""


@pytest.mark.timeout(120)
def test_an_incomplete_analysis_is_asked_again_with_what_is_missing(procs, bus, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    start_stack(procs, bus)

    async def go():
        async with BusClient(bus.comm()) as client:
            accepted = await client.request("commands", CommandSubmit(
                text="Analyse this repository", repo=str(repo),
                type=CommandType.ANALYZE_PROJECT))
            sid = accepted.body.session_id

            async def done():
                st = await session_state(client, sid)
                return st if st.session.state.value != "running" else None

            return await wait_for(done, 90, "the analysis", interval=0.1)

    st = asyncio.run(go())
    assert st.session.state.value == "succeeded", st.session.detail
    [task] = st.tasks
    assert task.attempt == 2 and task.meta["rounds"] == 1
    asked = [h["detail"] for h in st.history if h["detail"].startswith("analysis incomplete")]
    assert asked == ["analysis incomplete: missing sections: risks"]
    check = st.session.report["analysis_check"]
    assert check["complete"] and check["files"]["risks"] == ["README.md"]
    assert "## Risks" in st.session.report["analysis"]
