"""The scripted model server: script loading and matching rules, the SSE event sequence,
errors, stalls, bad input and request recording, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from services.model_server.scripts import ScriptError, Turn, features, load, pick
from services.model_server.server import ModelServer

pytestmark = pytest.mark.timeout(30)

SCRIPT = """
name: t
turns:
  - match: {turn: 1, prompt_contains: "alpha"}
    reply:
      content:
        - {type: text, text: "writing the file a.txt now, then I will check it twice"}
        - {type: tool_use, name: Write, input: {file_path: a.txt, content: "A"}}
        - {type: tool_use, name: Bash, input: {command: "ls", description: "list"}}
      usage: {input_tokens: 1000, output_tokens: 50, cache_read_input_tokens: 7}
  - match: {turn: 2, last_tool_result_contains: "created"}
    reply: {content: [{type: text, text: "done after tool"}]}
  - match: {system_contains: "REVIEWER"}
    reply: {content: [{type: text, text: "approve"}]}
  - match: {prompt_contains: "overload"}
    reply: {error: {status: 529, type: overloaded_error, message: "busy"}}
  - match: {prompt_contains: "fail"}
    reply: {error: {status: 500, type: api_error, message: "scripted failure"}}
  - match: {prompt_contains: "hang"}
    reply: {stall: true}
  - match: {prompt_contains: "halt"}
    reply: {content: [{type: text, text: "cut"}], stop_reason: max_tokens}
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(SCRIPT)
    return path


@pytest.fixture
def server(script, tmp_path):
    with ModelServer([script], record=tmp_path / "rec.jsonl") as s:
        yield s


def body(prompt, *, system="", assistant_turns=0, tool_result=None, stream=True, extra=()):
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}, *extra]
    for i in range(assistant_turns):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "x"}]})
        content = [{"type": "tool_result", "tool_use_id": f"t{i}", "content": tool_result or "ok"}]
        messages.append({"role": "user", "content": content})
    return {"model": "claude-sonnet-x", "messages": messages, "stream": stream,
            "system": [{"type": "text", "text": system}], "max_tokens": 1000, "tools": [{}]}


def connect(server, timeout=10):
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def post(server, payload, path="/v1/messages?beta=true", timeout=10, raw=None, headers=None):
    conn = connect(server, timeout)
    try:
        data = raw if raw is not None else json.dumps(payload).encode()
        conn.request("POST", path, body=data,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def events(text):
    out = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


# ---- scripts and matching ------------------------------------------------------------


def test_each_criterion_is_checked(script):
    turns = load([script])
    assert pick(turns, body("do alpha"))[0] == "t#1"
    assert pick(turns, body("do alpha", assistant_turns=1, tool_result="file created"))[0] == "t#2"
    # turn 2 with another tool result: neither #1 (turn) nor #2 (tool result) holds
    assert pick(turns, body("do alpha", assistant_turns=1, tool_result="no luck")) is None
    assert pick(turns, body("x", system="you are the REVIEWER"))[0] == "t#3"
    assert pick(turns, body("the overload case"))[0] == "t#4"


def test_prompt_is_the_first_user_message_and_tool_results_the_latest(script):
    turns = load([script])
    # "alpha" in a later user message is not the prompt
    later = body("something", extra=[{"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": "alpha"}])
    assert pick(turns, later) is None
    # an older tool result does not count, only the latest user message's
    b = body("do alpha", assistant_turns=2, tool_result="file created")
    b["messages"][-1]["content"][0]["content"] = [{"type": "text", "text": "nothing"}]
    assert features(b)["last_tool_result"] == "nothing" and features(b)["turn"] == 3


def test_system_prompt_as_string_blocks_or_system_messages(script):
    turns = load([script])
    b = body("x")
    b["system"] = "plain REVIEWER string"
    assert pick(turns, b)[0] == "t#3"
    b = body("x", extra=[{"role": "system", "content": [{"type": "text", "text": "REVIEWER"}]}])
    assert pick(turns, b)[0] == "t#3"
    assert features(b)["turn"] == 1  # system messages are not assistant turns


def test_first_match_wins_in_file_order(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "turns: [{match: {prompt_contains: x}, reply: {content: [{type: text, text: A}]}}]")
    (tmp_path / "b.json").write_text(json.dumps(
        {"name": "bee", "turns": [{"reply": {"content": [{"type": "text", "text": "B"}]}},
                                  {"reply": {"content": [{"type": "text", "text": "C"}]}}]}))
    turns = load([tmp_path])
    name, turn = pick(turns, body("x marks"))
    assert name == "a#1" and isinstance(turn, Turn)
    assert pick(turns, body("other"))[0] == "bee#1"
    # files given one by one keep the order given
    assert pick(load([tmp_path / "b.json", tmp_path / "a.yaml"]), body("x"))[0] == "bee#1"


@pytest.mark.parametrize("text, problem", [
    ("turns: [{reply: {content: [{type: image}]}}]", "invalid"),
    ("turns: [{reply: {content: [{type: tool_use, input: {}}]}}]", "needs a name"),
    ("turns: [{reply: {}}]", "exactly one of"),
    ("turns: [{reply: {stall: true, content: [{type: text, text: x}]}}]", "exactly one of"),
    ("turns: [{match: {bogus: 1}, reply: {stall: true}}]", "bogus"),
    ("turns: [{match: {turn: 0}, reply: {stall: true}}]", "turn"),
    ("turns: [{reply: {error: {status: 200}}}]", "status"),
    ("{unclosed", "cannot read"),
])
def test_script_errors_are_clear(tmp_path, text, problem):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ScriptError, match=problem) as info:
        load([bad])
    assert "bad.yaml" in str(info.value)


def test_missing_script_file(tmp_path):
    with pytest.raises(ScriptError, match="cannot read"):
        load([tmp_path / "missing.yaml"])


# ---- the HTTP API --------------------------------------------------------------------


def test_stream_has_the_messages_api_event_sequence_and_usage(server):
    conn = connect(server)
    conn.request("POST", "/v1/messages?beta=true", body=json.dumps(body("do alpha")))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    evs = events(resp.read().decode())
    conn.close()
    names = [e for e, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = evs[0][1]["message"]
    assert start["model"] == "claude-sonnet-x" and start["role"] == "assistant"
    assert start["usage"]["input_tokens"] == 1000
    assert start["usage"]["cache_read_input_tokens"] == 7
    # each block: start, one or more deltas of its own index, stop; blocks in order
    blocks, i = [], 1
    while names[i] == "content_block_start":
        index = evs[i][1]["index"]
        assert index == len(blocks)
        block, deltas = evs[i][1]["content_block"], []
        i += 1
        while names[i] == "content_block_delta":
            assert evs[i][1]["index"] == index
            deltas.append(evs[i][1]["delta"])
            i += 1
        assert names[i] == "content_block_stop" and evs[i][1]["index"] == index
        i += 1
        blocks.append((block, deltas))
    assert i == len(evs) - 2 and len(blocks) == 3
    (text_block, text_deltas), (write, write_deltas), (bash, bash_deltas) = blocks
    assert text_block == {"type": "text", "text": ""}
    assert all(d["type"] == "text_delta" for d in text_deltas) and len(text_deltas) > 1
    assert "".join(d["text"] for d in text_deltas) == \
        "writing the file a.txt now, then I will check it twice"
    assert write["type"] == "tool_use" and write["name"] == "Write" and write["input"] == {}
    assert len(write_deltas) == 2 and all(d["type"] == "input_json_delta" for d in write_deltas)
    assert json.loads("".join(d["partial_json"] for d in write_deltas)) == \
        {"file_path": "a.txt", "content": "A"}
    assert json.loads("".join(d["partial_json"] for d in bash_deltas))["command"] == "ls"
    assert write["id"].startswith("toolu_") and write["id"] != bash["id"]
    delta = evs[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 50


def test_tool_use_ids_are_unique_across_requests(server):
    ids = set()
    for _ in range(3):
        _, text = post(server, body("do alpha"))
        ids |= {d["content_block"]["id"] for e, d in events(text)
                if e == "content_block_start" and d["content_block"]["type"] == "tool_use"}
    assert len(ids) == 6


def test_stop_reasons(server):
    _, text = post(server, body("do alpha", assistant_turns=1, tool_result="file created"))
    assert events(text)[-2][1]["delta"]["stop_reason"] == "end_turn"
    _, text = post(server, body("halt"))
    assert events(text)[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_unmatched_requests_get_a_final_text_and_are_recorded(server):
    status, text = post(server, body("unrelated"))
    evs = events(text)
    assert status == 200 and evs[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert "no scripted turn matched" in "".join(
        d["delta"].get("text", "") for e, d in evs if e == "content_block_delta")
    post(server, body("do alpha"))
    assert [r.matched for r in server.requests] == [None, "t#1"]
    assert server.unmatched() == server.requests[:1]


def test_non_streaming_request_gets_a_message(server):
    status, text = post(server, body("do alpha", stream=False))
    msg = json.loads(text)
    assert status == 200 and msg["type"] == "message" and msg["stop_reason"] == "tool_use"
    assert msg["model"] == "claude-sonnet-x"
    assert msg["content"][1]["input"] == {"file_path": "a.txt", "content": "A"}
    assert msg["content"][1]["id"] != msg["content"][2]["id"]
    assert msg["usage"] == {"input_tokens": 1000, "output_tokens": 50,
                            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7}


@pytest.mark.parametrize("prompt, status, type_, message", [
    ("overload please", 529, "overloaded_error", "busy"),
    ("fail now", 500, "api_error", "scripted failure"),
])
def test_scripted_api_errors_use_the_status_and_error_body(server, prompt, status, type_, message):
    got, text = post(server, body(prompt))
    assert got == status
    assert json.loads(text) == {"type": "error", "error": {"type": type_, "message": message}}
    assert server.requests[-1].status == status and server.requests[-1].matched is not None


def test_bad_input_gets_400_and_unknown_paths_404(server):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        status, text = post(server, None, raw=raw)
        assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    assert post(server, {"model": "m"})[0] == 400  # no messages
    assert post(server, {"model": "m", "messages": "hi"})[0] == 400
    assert post(server, {"x": 1}, path="/v1/other")[0] == 404
    conn = connect(server)
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    assert resp.status == 404 and json.loads(resp.read())["error"]["type"] == "not_found_error"
    conn.close()
    status, text = post(server, body("x"), path="/v1/messages/count_tokens")
    assert status == 200 and json.loads(text)["input_tokens"] > 0
    assert post(server, body("do alpha"))[0] == 200  # still serving
    assert [(r.method, r.path, r.status) for r in server.requests][-4:] == [
        ("POST", "/v1/other", 404), ("GET", "/v1/models", 404),
        ("POST", "/v1/messages/count_tokens", 200), ("POST", "/v1/messages", 200)]
    assert [r.path for r in server.messages()][-1:] == ["/v1/messages"]
    assert all(r.body.get("messages") for r in server.messages())


def test_the_clis_reachability_probe_is_answered(server):
    conn = connect(server)
    conn.request("HEAD", "/api/hello")  # claude auth status sends this
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    conn.close()
    assert [(r.method, r.path, r.status) for r in server.requests] == [("HEAD", "/api/hello", 200)]
    assert server.messages() == [] and server.unmatched() == []


def test_odd_but_valid_json_never_crashes_the_matcher(server):
    odd = {"system": 3, "stream": True, "messages": [
        1, {"role": "user", "content": 5}, {"role": "assistant"},
        {"role": "user", "content": [1, {"type": "tool_result", "content": 7},
                                     {"type": "tool_result", "content": None}]}]}
    status, text = post(server, odd)
    assert status == 200 and events(text)[-1][0] == "message_stop"
    assert server.requests[-1].matched is None


def test_a_bad_content_length_is_refused(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert post(server, body("do alpha"))[0] == 200


def test_a_stalled_request_never_answers_and_stop_still_returns(script):
    server = ModelServer([script]).start()
    try:
        with pytest.raises(TimeoutError):
            post(server, body("hang forever"), timeout=0.5)
        assert server.requests[0].matched == "t#6"
        # a second client is still blocked when the server stops: its connection is closed
        outcome = {}

        def call():
            try:
                outcome["answer"] = post(server, body("hang again"), timeout=20)
            except Exception as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        assert server.wait_for_request(lambda r: "again" in json.dumps(r.body), timeout=10)
        assert not outcome
    finally:
        started = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 3
    thread.join(timeout=10)
    assert not thread.is_alive() and "answer" not in outcome


def test_stop_does_not_wait_for_idle_connections(script):
    server = ModelServer([script]).start()
    # a client that connects and never sends a request
    idle = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    idle.sendall(b"POST /v1/messages HTTP/1.1\r\n")  # and the rest never comes
    try:
        # connections are accepted in order: once this one is answered, the idle one has a
        # handler thread blocked reading it
        assert post(server, body("do alpha"))[0] == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
    finally:
        idle.close()


def test_requests_are_recorded_to_memory_and_file(server, tmp_path):
    post(server, body("do alpha"), headers={"x-api-key": "secret", "anthropic-version": "v1",
                                            "x-app": "cli"})
    assert len(server.requests) == 1
    rec = server.requests[0]
    assert rec.matched == "t#1" and rec.path == "/v1/messages" and rec.status == 200
    assert rec.body["messages"][0]["role"] == "user" and rec.ts <= time.time()
    assert rec.headers["anthropic-version"] == "v1" and rec.headers["x-app"] == "cli"
    assert "secret" not in json.dumps(rec.headers)
    line = json.loads((tmp_path / "rec.jsonl").read_text().splitlines()[0])
    assert line["matched"] == "t#1" and line["body"] == rec.body and line["path"] == rec.path
    assert line["headers"] == rec.headers
    assert server.conversations() == server.requests


def test_wait_for_request_returns_none_after_its_timeout(server):
    started = time.monotonic()
    assert server.wait_for_request(timeout=0.2) is None
    assert time.monotonic() - started >= 0.2
    post(server, body("do alpha"))
    assert server.wait_for_request(lambda r: r.matched == "t#1", timeout=5) is server.requests[0]


def test_concurrent_requests_are_all_answered_and_recorded(server):
    results = []

    def call(i):
        results.append(post(server, body(f"do alpha {i}"))[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == [200] * 8 and len(server.requests) == 8
