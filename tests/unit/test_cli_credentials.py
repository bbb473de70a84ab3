"""`ccaa submit` refuses a session no Claude Code agent could run (what the agents found
when they started, PeerInfo.auth), warns when only some can."""

from __future__ import annotations

from protocols.command import CommandType
from protocols.peer import PeerInfo, PeerKind
from services.cli.credentials import submit_check
from services.cli.views import status_table
from protocols.peer import RegistryListReply

BAD = "Claude Code is not logged in and has no API key: set ANTHROPIC_API_KEY ..."


def agent(name, role, auth):
    return PeerInfo(name=name, kind=PeerKind.AGENT, role=role, host="h", auth=auth)


def test_none_able_refuses_with_the_reason_and_the_way_round():
    peers = [agent("w1", "worker", BAD), agent("a1", "architect", BAD),
             agent("u1", "utility", "")]  # a command agent: no Claude Code, not counted
    refusal, warning = submit_check(peers, None, "worker")
    assert warning == ""
    assert refusal.startswith("no Claude Code agent that would run this can authenticate")
    assert "w1 (worker@h)" in refusal and "a1 (architect@h)" in refusal
    assert "ANTHROPIC_API_KEY" in refusal and "--skip-auth-check" in refusal


def test_some_able_warns_and_submits():
    peers = [agent("w1", "worker", BAD), agent("w2", "worker", "ok")]
    refusal, warning = submit_check(peers, CommandType.IMPLEMENT_FEATURE, "worker")
    assert refusal == "" and warning.startswith("1 of 2 Claude Code agents cannot")
    assert "w1 (worker@h)" in warning and "w2" not in warning


def test_a_run_command_counts_only_its_role_and_no_claude_agents_pass():
    peers = [agent("w1", "worker", BAD), agent("u1", "utility", "")]
    assert submit_check(peers, CommandType.RUN, "utility") == ("", "")
    assert submit_check(peers, CommandType.RUN, "worker")[0]
    assert submit_check([agent("u1", "utility", "")], None, "worker") == ("", "")
    assert submit_check([], None, "worker") == ("", "")


def test_status_marks_an_agent_that_cannot_authenticate():
    table = status_table(RegistryListReply(hub_id="x", hub_pid=1, peers=[
        agent("w1", "worker", BAD), agent("w2", "worker", "ok")]), "ipc://hub")
    w1 = next(line for line in table.splitlines() if "w1" in line)
    w2 = next(line for line in table.splitlines() if "w2" in line)
    assert "cannot authenticate" in w1 and "cannot authenticate" not in w2
