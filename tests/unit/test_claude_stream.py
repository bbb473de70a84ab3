"""The mapping from claude-agent-sdk messages to progress events and result data."""

from __future__ import annotations

from typing import Any

import pytest
from claude_agent_sdk.types import (
    AssistantMessage,
    ResultMessage,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from protocols.task import Outcome, TaskSpec
from services.agent.executors.base import RunContext
from services.agent.executors.claude_stream import ClaudeStream, summarize_tool_input

pytestmark = pytest.mark.timeout(10)

SESSION = "3ead8f5d-2f57-44f4-a5cb-35c4091abe4a"
MODEL = "claude-sonnet-5-5"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, summary: str, data: dict[str, Any]) -> None:
        self.events.append((kind, summary, data))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]

    def of(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(s, d) for k, s, d in self.events if k == kind]


def make_stream() -> tuple[ClaudeStream, RunContext, Recorder]:
    rec = Recorder()
    spec = TaskSpec(task_id="t1", attempt_id="a1", session_id="s1", prompt="do it")
    ctx = RunContext(spec=spec, agent_id="agent-1", progress=rec)
    return ClaudeStream(ctx), ctx, rec


def init_message() -> SystemMessage:
    return SystemMessage(subtype="init", data={
        "type": "system", "subtype": "init", "session_id": SESSION, "cwd": "/repo",
        "model": MODEL, "tools": ["Bash", "Write"], "permissionMode": "acceptEdits"})


def assistant(*blocks: Any, message_id: str = "msg_1", usage: dict | None = None,
              error: str | None = None, parent: str | None = None) -> AssistantMessage:
    return AssistantMessage(content=list(blocks), model=MODEL, message_id=message_id,
                            usage=usage, error=error, session_id=SESSION,
                            parent_tool_use_id=parent)  # type: ignore[arg-type]


def result(**over: Any) -> ResultMessage:
    fields: dict[str, Any] = dict(
        subtype="success", duration_ms=1234, duration_api_ms=800, is_error=False,
        num_turns=3, session_id=SESSION, total_cost_usd=0.0123, result="All done.",
        usage={"input_tokens": 300, "output_tokens": 150, "cache_read_input_tokens": 0,
               "cache_creation_input_tokens": 0},
        model_usage={MODEL: {"inputTokens": 300, "outputTokens": 150, "costUSD": 0.0123}},
        permission_denials=[], stop_reason="end_turn", terminal_reason="completed")
    fields.update(over)
    return ResultMessage(**fields)


def test_summaries_name_the_file_or_command():
    assert summarize_tool_input("Write", {"file_path": "src/a.py", "content": "x" * 999}) \
        == "src/a.py"
    assert summarize_tool_input("Edit", {"file_path": "b.py", "old_string": "a",
                                         "new_string": "b"}) == "b.py"
    assert summarize_tool_input("Bash", {"command": "pytest -q\n  tests/",
                                         "description": "run tests"}) == "pytest -q tests/"
    assert summarize_tool_input("Grep", {"pattern": "TODO", "path": "src"}) == "TODO in src"
    assert summarize_tool_input("TodoWrite", {"todos": [{}, {}]}) == "2 todos"
    assert summarize_tool_input("mcp__x__y", {"answer": 42}) == '{"answer": 42}'
    assert summarize_tool_input("Anything", {}) == ""
    assert len(summarize_tool_input("Bash", {"command": "echo " + "y" * 1000})) <= 200


def test_a_successful_run_reports_progress_and_result_data():
    stream, ctx, rec = make_stream()
    stream.handle(init_message())
    assert ctx.data["session_id"] == SESSION  # known before the result arrives
    stream.handle(assistant(TextBlock("Writing the file."),
                            ToolUseBlock("toolu_1", "Write", {"file_path": "hello.py",
                                                              "content": "print(1)\n" * 100}),
                            usage={"input_tokens": 100, "output_tokens": 20}))
    stream.handle(UserMessage(content=[ToolResultBlock("toolu_1", "File created", False)]))
    stream.handle(assistant(ToolUseBlock("toolu_2", "Bash", {"command": "python hello.py"}),
                            message_id="msg_2", usage={"input_tokens": 120, "output_tokens": 5}))
    # the CLI sends one AssistantMessage per block: the same message id counts once
    stream.handle(assistant(TextBlock("Ran it."), message_id="msg_2",
                            usage={"input_tokens": 120, "output_tokens": 5}))
    assert ctx.data["num_turns"] == 2 and ctx.data["tool_uses"] == 2
    assert ctx.data["usage"] == {"input_tokens": 220, "output_tokens": 25}  # partial
    stream.handle(StreamEvent(uuid="u", session_id=SESSION, event={"type": "ping"}))
    stream.handle(result())

    tool_uses = rec.of("tool_use")
    assert [s for s, _ in tool_uses] == ["Write: hello.py", "Bash: python hello.py"]
    write_data = tool_uses[0][1]
    assert write_data["tool"] == "Write" and write_data["tool_use_id"] == "toolu_1"
    assert write_data["input"]["file_path"] == "hello.py"
    assert len(write_data["input"]["content"]) < 300  # file contents are clipped
    assert [s for s, _ in rec.of("text")] == ["Writing the file.", "Ran it."]
    assert rec.kinds()[0] == "session" and rec.kinds()[-1] == "result"
    assert "Writing the file." in ctx.stdout.text()

    data = ctx.data
    assert data["result"] == "All done." and data["is_error"] is False
    assert data["subtype"] == "success" and data["session_id"] == SESSION
    assert data["num_turns"] == 3 and data["duration_ms"] == 1234
    assert data["total_cost_usd"] == pytest.approx(0.0123)
    assert data["usage"]["input_tokens"] == 300 and data["usage"]["output_tokens"] == 150
    assert data["model_usage"][MODEL]["costUSD"] == pytest.approx(0.0123)
    assert data["permission_denials"] == []
    verdict = stream.outcome()
    assert verdict.outcome is Outcome.SUCCEEDED and verdict.exit_code == 0


def test_is_error_with_subtype_success_fails_with_the_api_error():
    stream, ctx, rec = make_stream()
    stream.handle(init_message())
    stream.handle(SystemMessage(subtype="api_retry", data={
        "type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 2,
        "retry_delay_ms": 500, "error_status": 500, "error": "server_error"}))
    stream.handle(assistant(TextBlock("API Error: 500 scripted boom."), message_id="m",
                            error="server_error"))
    stream.handle(result(is_error=True, subtype="success", result="API Error: 500 scripted boom.",
                         api_error_status=500, terminal_reason="api_error", total_cost_usd=0,
                         num_turns=1))
    (summary, data), = rec.of("retry")
    assert "1/2" in summary and "500" in summary and data["error_status"] == 500
    assert ctx.data["api_retries"] == 1 and ctx.data["api_error"] == "server_error"
    assert ctx.data["is_error"] is True and ctx.data["api_error_status"] == 500
    verdict = stream.outcome(RuntimeError("exit code 1"), exit_code=1)
    assert verdict.outcome is Outcome.FAILED and verdict.exit_code == 1
    assert "API Error: 500 scripted boom." in verdict.error
    assert "HTTP 500" in verdict.error and verdict.error.count("scripted boom") == 1


def test_error_subtypes_fail_with_the_cli_errors():
    stream, ctx, _ = make_stream()
    stream.handle(result(is_error=True, subtype="error_max_turns", result=None,
                         errors=["Reached maximum number of turns (2)"]))
    verdict = stream.outcome()
    assert verdict.outcome is Outcome.FAILED
    assert "error_max_turns" in verdict.error and "maximum number of turns" in verdict.error
    assert ctx.data["errors"] == ["Reached maximum number of turns (2)"]


def test_no_result_fails_and_says_why():
    stream, ctx, _ = make_stream()
    stream.handle(init_message())
    stream.handle(SystemMessage(subtype="api_retry", data={
        "attempt": 3, "max_retries": 10, "error_status": 529, "error": "overloaded"}))
    verdict = stream.outcome(ConnectionError("CLI exited with code 143"), exit_code=143)
    assert verdict.outcome is Outcome.FAILED and verdict.exit_code == 143
    assert "without a result" in verdict.error and "code 143" in verdict.error
    assert "HTTP 529 overloaded" in verdict.error
    assert ctx.data["session_id"] == SESSION  # partial data stays for the report


def test_tool_errors_denials_and_subagents_are_reported():
    stream, ctx, rec = make_stream()
    stream.handle(SystemMessage(subtype="permission_denied", data={
        "tool_name": "Bash", "tool_use_id": "toolu_9", "message": "rm -rf / was blocked"}))
    stream.handle(UserMessage(content=[ToolResultBlock(
        "toolu_9", [{"type": "text", "text": "Exit code 2: no such file"}], True)]))
    stream.handle(UserMessage(content="a plain prompt"))
    stream.handle(SystemMessage(subtype="task_started", data={
        "task_id": "bt1", "tool_use_id": "toolu_3", "description": "explore the repo"}))
    stream.handle(assistant(ToolUseBlock("toolu_4", "Read", {"file_path": "x.py"}),
                            message_id="sub", parent="toolu_3"))
    assert rec.of("permission_denied")[0][0] == "Bash: rm -rf / was blocked"
    assert rec.of("tool_error")[0][0] == "Exit code 2: no such file"
    assert rec.of("subtask")[0][0] == "explore the repo"
    summary, data = rec.of("tool_use")[0]
    assert summary == "Read: x.py" and data["parent_tool_use_id"] == "toolu_3"
    assert ctx.data["num_turns"] == 0  # a subagent's message is not a turn of ours
