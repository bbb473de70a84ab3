"""Turn the claude-agent-sdk message stream into progress events and result data.

``ClaudeStream.handle`` takes each SDK message as it arrives: it reports what the agent
is doing through ``ctx.progress`` (``tool_use``, ``text``, ``retry``, ...) and keeps
``ctx.data`` current (session id, turns, partial usage), so an attempt that times out
or is cancelled still reports how far it got. ``ClaudeStream.outcome`` judges the run:
it succeeded only if a ``ResultMessage`` arrived with ``is_error`` False (the CLI has
reported API errors as ``subtype: success`` with ``is_error: true``).
"""

from __future__ import annotations

import json
from typing import Any

from claude_agent_sdk.types import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
)

from protocols.task import Outcome
from services.agent.executors.claude_auth import how_to_fix, is_auth_failure
from services.agent.executors.base import ExecutionResult, RunContext

#: characters of a text block or tool input shown in one progress summary
SUMMARY_CHARS = 200
#: characters of the final text kept in ctx.data["result"]
RESULT_CHARS = 16_000

# tool name -> the input fields that best say what it does, first present wins
_TOOL_KEYS: dict[str, tuple[str, ...]] = {
    "Bash": ("command",),
    "Read": ("file_path",),
    "Write": ("file_path",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern",),
    "Grep": ("pattern",),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description", "prompt"),
    "Agent": ("description", "prompt"),
    "TodoWrite": ("todos",),
}
_GENERIC_KEYS = ("file_path", "path", "command", "pattern", "url", "query", "description")


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize_tool_input(name: str, tool_input: dict[str, Any] | None) -> str:
    """A short description of a tool call, e.g. ``src/app.py`` or ``pytest -q``."""
    tool_input = tool_input or {}
    for key in _TOOL_KEYS.get(name, ()) + _GENERIC_KEYS:
        value = tool_input.get(key)
        if value in (None, "", []):
            continue
        if key == "todos" and isinstance(value, list):
            return f"{len(value)} todos"
        if key == "pattern" and tool_input.get("path"):
            return _clip(f"{value} in {tool_input['path']}")
        return _clip(value if isinstance(value, str) else json.dumps(value, default=str))
    return _clip(json.dumps(tool_input, default=str)) if tool_input else ""


def _clip_input(tool_input: dict[str, Any]) -> dict[str, Any]:
    """The tool input for an event, long strings shortened (file contents, edits)."""
    out: dict[str, Any] = {}
    for key, value in (tool_input or {}).items():
        if isinstance(value, str) and len(value) > SUMMARY_CHARS:
            out[key] = value[:SUMMARY_CHARS] + f"… ({len(value)} chars)"
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        else:
            out[key] = _clip(json.dumps(value, default=str))
    return out


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class ClaudeStream:
    """Progress and result data for one run; feed it every message with ``handle``."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.data = ctx.data
        self.result: ResultMessage | None = None
        self.api_error = ""  # the last "API Error: ..." text or retry error seen
        self._message_ids: set[str] = set()
        self.data.setdefault("num_turns", 0)
        self.data.setdefault("tool_uses", 0)

    # ---- per message ------------------------------------------------------------------

    def handle(self, msg: Any) -> None:
        if isinstance(msg, ResultMessage):
            self._on_result(msg)
        elif isinstance(msg, AssistantMessage):
            self._on_assistant(msg)
        elif isinstance(msg, UserMessage):
            self._on_user(msg)
        elif isinstance(msg, SystemMessage):
            self._on_system(msg)
        # StreamEvent, RateLimitEvent and other kinds carry nothing reported here

    def _progress(self, kind: str, summary: str, data: dict[str, Any] | None = None) -> None:
        self.ctx.progress(kind, summary, data or {})

    def _on_system(self, msg: SystemMessage) -> None:
        d = msg.data or {}
        if msg.subtype == "init":
            self.data["session_id"] = d.get("session_id", self.data.get("session_id", ""))
            for key, field in (("model", "model"), ("claude_code_version", "cli_version")):
                if d.get(key):
                    self.data[field] = d[key]
            self._progress("session", f"claude session {d.get('session_id', '?')} "
                           f"model {d.get('model', '?')} in {d.get('cwd', '?')}",
                           {"session_id": d.get("session_id"), "model": d.get("model"),
                            "cwd": d.get("cwd"), "permission_mode": d.get("permissionMode")})
        elif msg.subtype == "api_retry":
            self.data["api_retries"] = self.data.get("api_retries", 0) + 1
            status, error = d.get("error_status"), d.get("error", "")
            self.api_error = f"HTTP {status} {error}".strip() if status else str(error)
            self._progress("retry", f"API retry {d.get('attempt', '?')}/"
                           f"{d.get('max_retries', '?')} after {self.api_error or 'an error'}"
                           f", next in {d.get('retry_delay_ms', '?')} ms",
                           {k: d.get(k) for k in ("attempt", "max_retries", "retry_delay_ms",
                                                  "error_status", "error")})
        elif msg.subtype == "permission_denied":
            tool = d.get("tool_name", "?")
            self._progress("permission_denied", f"{tool}: {_clip(d.get('message', ''))}",
                           {"tool": tool, "tool_use_id": d.get("tool_use_id")})
        elif msg.subtype == "task_started":
            self._progress("subtask", _clip(d.get("description", "") or "subagent started"),
                           {"task_id": d.get("task_id"), "tool_use_id": d.get("tool_use_id")})

    def _on_assistant(self, msg: AssistantMessage) -> None:
        if msg.session_id:
            self.data["session_id"] = msg.session_id
        top_level = msg.parent_tool_use_id is None
        new = msg.message_id is None or msg.message_id not in self._message_ids
        if msg.message_id:
            self._message_ids.add(msg.message_id)
        if top_level and new and self.result is None:
            self.data["num_turns"] = self.data.get("num_turns", 0) + 1
            if msg.usage:  # partial usage until the result brings the totals
                usage = self.data.setdefault("usage", {})
                for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                            "cache_read_input_tokens"):
                    if isinstance(msg.usage.get(key), int):
                        usage[key] = usage.get(key, 0) + msg.usage[key]
        if msg.error:
            self.data["api_error"] = msg.error
        extra = {"parent_tool_use_id": msg.parent_tool_use_id} if not top_level else {}
        for block in msg.content:
            if isinstance(block, ToolUseBlock):
                self.data["tool_uses"] = self.data.get("tool_uses", 0) + 1
                summary = summarize_tool_input(block.name, block.input)
                self._progress("tool_use", f"{block.name}: {summary}" if summary else block.name,
                               {"tool": block.name, "tool_use_id": block.id,
                                "input": _clip_input(block.input), **extra})
            elif isinstance(block, TextBlock) and block.text.strip():
                if msg.error:
                    self.api_error = block.text.strip()
                if top_level:
                    self.ctx.stdout.add(block.text.rstrip() + "\n")
                self._progress("text", _clip(block.text),
                               {"chars": len(block.text), **extra})
            elif isinstance(block, ThinkingBlock) and block.thinking.strip():
                self._progress("thinking", _clip(block.thinking), {"chars": len(block.thinking)})

    def _on_user(self, msg: UserMessage) -> None:
        if isinstance(msg.content, str):
            return
        for block in msg.content:
            if isinstance(block, ToolResultBlock) and block.is_error:
                self._progress("tool_error", _clip(_result_text(block.content)),
                               {"tool_use_id": block.tool_use_id})

    def _on_result(self, msg: ResultMessage) -> None:
        self.result = msg
        self.data.update(
            result=(msg.result or "")[-RESULT_CHARS:],
            is_error=msg.is_error,
            subtype=msg.subtype,
            session_id=msg.session_id or self.data.get("session_id", ""),
            num_turns=msg.num_turns,
            duration_ms=msg.duration_ms,
            duration_api_ms=msg.duration_api_ms,
            total_cost_usd=msg.total_cost_usd,
            usage=msg.usage or {},
            model_usage=msg.model_usage or {},
            permission_denials=msg.permission_denials or [],
            stop_reason=msg.stop_reason,
            terminal_reason=msg.terminal_reason,
        )
        if msg.errors:
            self.data["errors"] = list(msg.errors)
        if msg.api_error_status is not None:
            self.data["api_error_status"] = msg.api_error_status
        cost = f"${msg.total_cost_usd:.4f}" if msg.total_cost_usd is not None else "$?"
        self._progress("result", f"{'error' if msg.is_error else 'done'} ({msg.subtype}) after "
                       f"{msg.num_turns} turns, {cost}",
                       {"is_error": msg.is_error, "subtype": msg.subtype,
                        "num_turns": msg.num_turns, "total_cost_usd": msg.total_cost_usd})

    # ---- the verdict ------------------------------------------------------------------

    def outcome(self, exc: BaseException | None = None,
                exit_code: int | None = None) -> ExecutionResult:
        """SUCCEEDED only for a result with is_error False; FAILED otherwise, with
        the clearest reason at hand (API error text, CLI errors, the exception)."""
        res = self.result
        if res is not None and not res.is_error:
            return ExecutionResult(Outcome.SUCCEEDED, exit_code=exit_code or 0)
        if res is not None:
            reason = res.subtype
            if res.api_error_status is not None:
                reason += f", HTTP {res.api_error_status}"
            if res.terminal_reason:
                reason += f", {res.terminal_reason}"
            parts: list[str] = []
            for part in [(res.result or "").strip(), *(res.errors or []), self.api_error]:
                if part and not any(part in seen for seen in parts):
                    parts.append(part)
            detail = "; ".join(parts)
            if not detail and exc is not None:
                detail = f"{type(exc).__name__}: {exc}"
            error = f"claude reported an error ({reason}): {detail or 'no detail given'}"
            if is_auth_failure(detail, res.api_error_status):
                # running it again cannot help: the credentials are what is wrong
                self.data["auth_failed"] = True
                error = ("Claude Code could not authenticate on agent "
                         f"{self.ctx.agent_id} ({detail or reason}); to fix it: "
                         + how_to_fix("claude"))
        else:
            error = "claude ended without a result"
            if exc is not None:
                error += f": {type(exc).__name__}: {exc}"
            if self.api_error:
                error += f"; last API error: {self.api_error}"
            stderr = self.ctx.stderr.text().strip()
            if stderr:
                error += f"; stderr: {stderr[-800:]}"
        return ExecutionResult(Outcome.FAILED, exit_code=exit_code, error=error[:4000])
