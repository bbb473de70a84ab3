"""A scripted model server: the Anthropic Messages API (streaming and not) on loopback,
answering from model scripts. Tests, benchmarks and the offline demo point the real
Claude Code CLI at it with ANTHROPIC_BASE_URL; production uses the real API.

Every request is recorded (``.requests``; optionally appended to a JSON-lines file)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.model_server.scripts import Reply, Turn, load, pick

MAX_BODY = 32 * 1024 * 1024
FALLBACK = Reply.model_validate({"content": [{"type": "text",
                                              "text": "no scripted turn matched"}]})


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    matched: str | None
    ts: float = field(default_factory=time.time)
    headers: dict[str, str] = field(default_factory=dict)


class ModelServer:
    def __init__(self, scripts: list[str | Path] = (), host: str = "127.0.0.1", port: int = 0,
                 record: str | Path | None = None, turns: list[tuple[str, Turn]] | None = None):
        self.turns = turns if turns is not None else load(list(scripts))
        self.requests: list[Recorded] = []
        self.record_path = Path(record) if record else None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ModelServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="model-server",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled requests
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_id(self) -> int:
        return next(self._ids)

    def record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)
            if self.record_path is not None:
                with self.record_path.open("a") as f:
                    f.write(json.dumps({"ts": rec.ts, "path": rec.path, "matched": rec.matched,
                                        "body": rec.body}) + "\n")

    def conversations(self) -> list[Recorded]:
        """Requests that carried tools (the agent's main loop, not side requests)."""
        return [r for r in self.requests if r.body.get("tools")]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: ModelServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet: requests are recorded instead
        pass

    # ---- helpers ----------------------------------------------------------------------

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, type_: str, message: str) -> None:
        self._json(status, {"type": "error", "error": {"type": type_, "message": message}})

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._error(400, "invalid_request_error", "bad content-length")
            return None
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "invalid_request_error", "the body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "invalid_request_error", "the body must be a JSON object")
            return None
        return body

    # ---- routes -----------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        body = self._body()
        if body is None:
            return
        app = self.server.app
        if path == "/v1/messages/count_tokens":
            app.record(Recorded(path, body, None))
            self._json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path != "/v1/messages":
            app.record(Recorded(path, body, None))
            self._error(404, "not_found_error", f"no route {path}")
            return
        if not isinstance(body.get("messages"), list):
            self._error(400, "invalid_request_error", "messages: a list is required")
            return
        chosen = pick(app.turns, body)
        name, reply = (chosen[0], chosen[1].reply) if chosen else (None, FALLBACK)
        app.record(Recorded(path, body, name, headers={
            k: v for k, v in self.headers.items() if k.lower().startswith(("anthropic", "x-"))}))
        if reply.stall:
            app._stopping.wait()
            self.close_connection = True
            return
        if reply.error is not None:
            self._error(reply.error.status, reply.error.type, reply.error.message)
            return
        msg_id = f"msg_{app.next_id():06d}"
        if body.get("stream"):
            self._stream(body, reply, msg_id)
        else:
            self._json(200, _message(body, reply, msg_id, app))

    def do_GET(self) -> None:  # noqa: N802
        self._error(404, "not_found_error", f"no route {self.path}")

    def _stream(self, body: dict[str, Any], reply: Reply, msg_id: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        usage = reply.usage
        app = self.server.app

        def event(name: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": body.get("model", ""),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                      "cache_read_input_tokens": usage.cache_read_input_tokens}}})
        for index, block in enumerate(reply.content):
            if block.type == "text":
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "text", "text": ""}})
                event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "text_delta", "text": block.text}})
            else:
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "tool_use",
                                                                "id": f"toolu_{app.next_id():06d}",
                                                                "name": block.name, "input": {}}})
                text = json.dumps(block.input)
                half = len(text) // 2
                for part in (text[:half], text[half:]):
                    event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "input_json_delta",
                                                            "partial_json": part}})
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": reply.stop(), "stop_sequence": None},
                                "usage": {"output_tokens": usage.output_tokens}})
        event("message_stop", {"type": "message_stop"})
        self.wfile.flush()


def _message(body: dict[str, Any], reply: Reply, msg_id: str, app: ModelServer) -> dict[str, Any]:
    content = []
    for block in reply.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        else:
            content.append({"type": "tool_use", "id": f"toolu_{app.next_id():06d}",
                            "name": block.name, "input": block.input})
    return {"id": msg_id, "type": "message", "role": "assistant", "model": body.get("model", ""),
            "content": content, "stop_reason": reply.stop(), "stop_sequence": None,
            "usage": reply.usage.model_dump()}
