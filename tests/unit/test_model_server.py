"""The scripted model server: matching rules, the SSE event sequence, errors, stalls,
bad input and request recording, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from services.model_server.scripts import ScriptError, Turn, load, pick
from services.model_server.server import ModelServer

pytestmark = pytest.mark.timeout(30)

SCRIPT = """
name: t
turns:
  - match: {turn: 1, prompt_contains: "alpha"}
    reply:
      content:
        - {type: text, text: "writing"}
        - {type: tool_use, name: Write, input: {file_path: a.txt, content: "A"}}
      usage: {input_tokens: 1000, output_tokens: 50}
  - match: {turn: 2, last_tool_result_contains: "created"}
    reply: {content: [{type: text, text: "done after tool"}]}
  - match: {system_contains: "REVIEWER"}
    reply: {content: [{type: text, text: "approve"}]}
  - match: {prompt_contains: "overload"}
    reply: {error: {status: 529, type: overloaded_error, message: "busy"}}
  - match: {prompt_contains: "hang"}
    reply: {stall: true}
"""


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SCRIPT)
    with ModelServer([path], record=tmp_path / "rec.jsonl") as s:
        yield s


def body(prompt, *, system="", assistant_turns=0, tool_result=None, stream=True):
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    for i in range(assistant_turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "x"}]})
        content = [{"type": "tool_result", "tool_use_id": f"t{i}", "content": tool_result or "ok"}]
        messages.append({"role": "user", "content": content})
    return {"model": "claude-sonnet-x", "messages": messages, "stream": stream,
            "system": [{"type": "text", "text": system}], "max_tokens": 1000, "tools": [{}]}


def post(server, payload, path="/v1/messages?beta=true", timeout=10, raw=None):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = raw if raw is not None else json.dumps(payload).encode()
    conn.request("POST", path, body=data, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def events(text):
    out = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_has_the_messages_api_event_sequence_and_usage(server):
    status, text = post(server, body("do alpha"))
    assert status == 200
    evs = events(text)
    names = [e for e, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    start = evs[0][1]["message"]
    assert start["model"] == "claude-sonnet-x" and start["usage"]["input_tokens"] == 1000
    partial = "".join(d["delta"]["partial_json"] for e, d in evs
                      if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"file_path": "a.txt", "content": "A"}
    tool_start = next(d for e, d in evs if e == "content_block_start"
                      and d["content_block"]["type"] == "tool_use")
    assert tool_start["content_block"]["name"] == "Write"
    delta = evs[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 50


def test_matching_by_turn_tool_result_and_system(server):
    _, text = post(server, body("do alpha", assistant_turns=1, tool_result="file created"))
    assert "done after tool" in text and '"end_turn"' in text
    _, text = post(server, body("anything", system="you are the REVIEWER"))
    assert "approve" in text
    _, text = post(server, body("unrelated"))
    assert "no scripted turn matched" in text
    matched = [r.matched for r in server.requests]
    assert matched == ["t#2", "t#3", None]


def test_non_streaming_request_gets_a_message(server):
    status, text = post(server, body("do alpha", stream=False))
    msg = json.loads(text)
    assert status == 200 and msg["stop_reason"] == "tool_use"
    assert msg["content"][1]["input"] == {"file_path": "a.txt", "content": "A"}
    assert msg["usage"]["output_tokens"] == 50


def test_scripted_api_errors_use_the_status_and_error_body(server):
    status, text = post(server, body("overload please"))
    assert status == 529
    assert json.loads(text) == {"type": "error",
                                "error": {"type": "overloaded_error", "message": "busy"}}


def test_bad_input_gets_400_and_unknown_paths_404(server):
    assert post(server, None, raw=b"{not json")[0] == 400
    assert post(server, None, raw=b"[1, 2]")[0] == 400
    assert post(server, {"model": "m"})[0] == 400  # no messages
    assert post(server, {"x": 1}, path="/v1/other")[0] == 404
    status, text = post(server, body("x"), path="/v1/messages/count_tokens")
    assert status == 200 and json.loads(text)["input_tokens"] > 0
    assert post(server, body("do alpha"))[0] == 200  # still serving


def test_a_stalled_request_never_answers_and_stop_still_returns(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SCRIPT)
    server = ModelServer([path]).start()
    outcome = {}

    def call():
        try:
            post(server, body("hang forever"), timeout=30)
            outcome["answered"] = True
        except Exception as exc:  # the connection is closed when the server stops
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive() and not outcome  # no answer while it stalls
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_requests_are_recorded_to_memory_and_file(server, tmp_path):
    post(server, body("do alpha"))
    assert len(server.requests) == 1 and server.requests[0].matched == "t#1"
    line = json.loads((tmp_path / "rec.jsonl").read_text().splitlines()[0])
    assert line["matched"] == "t#1" and line["body"]["messages"][0]["role"] == "user"
    assert server.conversations() == server.requests


def test_script_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns: [{reply: {content: [{type: image}]}}]")
    with pytest.raises(ScriptError, match="bad.yaml is invalid"):
        load([bad])
    with pytest.raises(ScriptError, match="cannot read"):
        load([tmp_path / "missing.yaml"])


def test_first_match_wins_in_file_order(tmp_path):
    (tmp_path / "a.yaml").write_text("turns: [{match: {prompt_contains: x}, reply: {content: [{type: text, text: A}]}}]")
    (tmp_path / "b.yaml").write_text("turns: [{reply: {content: [{type: text, text: B}]}}]")
    turns = load([tmp_path])
    name, turn = pick(turns, body("x marks"))
    assert name == "a#1" and isinstance(turn, Turn)
    assert pick(turns, body("other"))[0] == "b#1"
