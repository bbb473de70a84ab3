"""Model scripts: YAML/JSON files of scripted turns, and how a request picks one.

    name: demo
    turns:
      - match: {turn: 1, prompt_contains: "multiply"}     # all given criteria must hold
        reply:
          content:
            - {type: text, text: "Writing the module."}
            - {type: tool_use, name: Write, input: {file_path: calc/multiply.py, content: "..."}}
          usage: {input_tokens: 1200, output_tokens: 90}
      - match: {prompt_contains: "boom"}
        reply: {error: {status: 529, type: overloaded_error, message: "try later"}}
      - match: {prompt_contains: "never"}
        reply: {stall: true}

Criteria (all optional; all given must hold):

- ``turn``: 1-based index of the assistant turn (assistant messages so far + 1);
- ``prompt_contains``: substring of the first user message's text (the task prompt; Claude
  Code also puts a ``<system-reminder>`` text block there);
- ``system_contains``: substring of the system prompt (a string or a list of text blocks)
  or of a ``role: system`` message (Claude Code sends its environment block that way:
  working directory, model id, tool list);
- ``last_tool_result_contains``: substring of the tool results in the latest user message;
- ``latest_user_contains``: substring of the latest user message's text (a resumed
  session's new instructions).

A reply is ``content`` (text and tool_use blocks, with optional ``stop_reason`` and
``usage``), or ``error`` (an HTTP error with an Anthropic error body), or ``stall: true``
(never answer). Turns are tried in file order, files in the order given; the first match
answers. A request nothing matches gets a short "no scripted turn matched" text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Match(_Model):
    turn: int | None = Field(None, ge=1)
    prompt_contains: str | None = None
    system_contains: str | None = None
    last_tool_result_contains: str | None = None
    latest_user_contains: str | None = None


class Usage(_Model):
    input_tokens: int = Field(100, ge=0)
    output_tokens: int = Field(20, ge=0)
    cache_creation_input_tokens: int = Field(0, ge=0)
    cache_read_input_tokens: int = Field(0, ge=0)


class Block(_Model):
    type: Literal["text", "tool_use"]
    text: str = ""
    name: str = ""
    input: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> "Block":
        if self.type == "tool_use" and not self.name:
            raise ValueError("a tool_use block needs a name (Write, Edit, Bash, Read, ...)")
        if self.type == "text" and (self.name or self.input):
            raise ValueError("a text block takes only text")
        return self


class ApiError(_Model):
    status: int = Field(500, ge=400, le=599)
    type: str = "api_error"
    message: str = "scripted error"


class Reply(_Model):
    content: list[Block] = []
    stop_reason: str | None = None
    usage: Usage = Usage()
    error: ApiError | None = None
    stall: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "Reply":
        kinds = [k for k, on in (("content", bool(self.content)), ("error", self.error is not None),
                                 ("stall", self.stall)) if on]
        if len(kinds) != 1:
            raise ValueError("a reply is exactly one of: content (non-empty), error, stall: true"
                             f" (got {', '.join(kinds) or 'none'})")
        return self

    def stop(self) -> str:
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b.type == "tool_use" for b in self.content) else "end_turn"


class Turn(_Model):
    match: Match = Match()
    reply: Reply


class Script(_Model):
    name: str = ""
    turns: list[Turn]


class ScriptError(Exception):
    pass


def load(paths: list[str | Path]) -> list[tuple[str, Turn]]:
    """Every turn of every script (a file, or a directory of .yaml/.yml/.json files)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
        else:
            files.append(p)
    turns: list[tuple[str, Turn]] = []
    for f in files:
        try:
            raw = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
            script = Script.model_validate(raw)
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
            raise ScriptError(f"cannot read script {f}: {exc}") from None
        except ValidationError as exc:
            raise ScriptError(f"script {f} is invalid: {exc}") from None
        name = script.name or f.stem
        turns += [(f"{name}#{i + 1}", t) for i, t in enumerate(script.turns)]
    return turns


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content
                         if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _tool_result_text(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    texts = []
    for b in content:
        if isinstance(b, dict) and b.get("type") == "tool_result":
            inner = b.get("content")
            texts.append(inner if isinstance(inner, str) else _text(inner))
    return "\n".join(texts)


def features(body: dict[str, Any]) -> dict[str, Any]:
    """What matching looks at, from a Messages API request body."""
    messages = body.get("messages") or []
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    prompt = _text(user[0].get("content")) if user else ""
    last = _tool_result_text(user[-1].get("content")) if user else ""
    turn = 1 + sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    system = [_text(body.get("system", ""))]
    system += [_text(m.get("content")) for m in messages
               if isinstance(m, dict) and m.get("role") == "system"]
    return {"prompt": prompt, "system": "\n".join(system), "turn": turn,
            "last_tool_result": last,
            "latest_user": _text(user[-1].get("content")) if user else ""}


def pick(turns: list[tuple[str, Turn]], body: dict[str, Any]) -> tuple[str, Turn] | None:
    f = features(body)
    for name, turn in turns:
        m = turn.match
        if m.turn is not None and m.turn != f["turn"]:
            continue
        if m.prompt_contains is not None and m.prompt_contains not in f["prompt"]:
            continue
        if m.system_contains is not None and m.system_contains not in f["system"]:
            continue
        if (m.last_tool_result_contains is not None
                and m.last_tool_result_contains not in f["last_tool_result"]):
            continue
        if (m.latest_user_contains is not None
                and m.latest_user_contains not in f["latest_user"]):
            continue
        return name, turn
    return None
