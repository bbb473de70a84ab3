"""A scripted model server: the Anthropic Messages API (streaming and not) on loopback,
answering from model scripts. Tests, benchmarks and the offline demo point the real
Claude Code CLI at it with ANTHROPIC_BASE_URL; production uses the real API.

Every request is recorded (``.requests``; optionally appended to a JSON-lines file), bad
ones and unknown paths included. Every response closes its connection, so stopping the
server never waits on an idle keep-alive client."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from services.model_server.scripts import Reply, Turn, load, pick

log = logging.getLogger("ccaa.model_server")

MAX_BODY = 32 * 1024 * 1024
CHUNK = 40  # characters of text per text_delta
FALLBACK = Reply.model_validate({"content": [{"type": "text",
                                              "text": "no scripted turn matched"}]})
_SECRET_HEADERS = {"x-api-key", "authorization", "proxy-authorization", "cookie"}


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    matched: str | None  # the scripted turn that answered ("file#n"), None if none did
    ts: float = field(default_factory=time.time)
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    status: int = 200

    def to_json(self) -> dict[str, Any]:
        return {"ts": self.ts, "method": self.method, "path": self.path,
                "status": self.status, "matched": self.matched, "headers": self.headers,
                "body": self.body}


class ModelServer:
    """``with ModelServer([script, ...]) as server:`` ... ``server.url`` ... ``server.requests``."""

    def __init__(self, scripts: list[str | Path] = (), host: str = "127.0.0.1", port: int = 0,
                 record: str | Path | None = None, turns: list[tuple[str, Turn]] | None = None):
        self.turns = turns if turns is not None else load(list(scripts))
        self.requests: list[Recorded] = []
        self.record_path = Path(record) if record else None
        self._cond = threading.Condition()
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
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_id(self) -> int:
        return next(self._ids)

    def record(self, rec: Recorded) -> None:
        with self._cond:
            self.requests.append(rec)
            if self.record_path is not None:
                with self.record_path.open("a") as f:
                    f.write(json.dumps(rec.to_json()) + "\n")
            self._cond.notify_all()

    def wait_for_request(self, predicate: Callable[[Recorded], bool] = lambda r: True,
                         timeout: float = 10.0) -> Recorded | None:
        """The first recorded request that satisfies ``predicate``, waiting up to ``timeout``
        seconds for it to arrive; None if none did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((r for r in self.requests if predicate(r)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self._cond.wait(left)

    def messages(self) -> list[Recorded]:
        """The Messages API requests (not probes, token counts or refused requests)."""
        return [r for r in self.requests
                if r.path == "/v1/messages" and isinstance(r.body.get("messages"), list)]

    def conversations(self) -> list[Recorded]:
        """Requests that carried tools (the agent's main loop, not side requests)."""
        return [r for r in self.requests if r.body.get("tools")]

    def unmatched(self) -> list[Recorded]:
        """Messages requests no scripted turn matched (answered with the fallback text)."""
        return [r for r in self.requests
                if r.path == "/v1/messages" and r.status == 200 and r.matched is None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for handler threads
    app: ModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("model server: error while handling a request", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 300  # an idle or half-sent request does not hold a thread for ever

    def log_message(self, *args: Any) -> None:  # quiet: requests are recorded instead
        pass

    # ---- helpers ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items()
                if k.lower().startswith(("anthropic", "x-")) and k.lower() not in _SECRET_HEADERS}

    def _record(self, path: str, body: dict[str, Any], matched: str | None, status: int) -> None:
        self.server.app.record(Recorded(path, body, matched, headers=self._headers(),
                                        method=self.command, status=status))

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("connection", "close")
        self.send_header("request-id", f"req_scripted_{self.server.app.next_id():06d}")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)

    def _error(self, status: int, type_: str, message: str) -> None:
        self._json(status, {"type": "error", "error": {"type": type_, "message": message}})

    def _body(self) -> tuple[dict[str, Any] | None, str]:
        """The JSON object body, or None and why not."""
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return None, "bad content-length"
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, "the body is not JSON"
        if not isinstance(body, dict):
            return None, "the body must be a JSON object"
        return body, ""

    def _bad(self, path: str, body: dict[str, Any] | None, why: str) -> None:
        self._record(path, body or {}, None, 400)
        self._error(400, "invalid_request_error", why)

    # ---- routes -----------------------------------------------------------------------

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away: nothing to answer

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        path = self.path.split("?", 1)[0]
        body, why = self._body()
        if body is None:
            return self._bad(path, None, why)
        app = self.server.app
        if path == "/v1/messages/count_tokens":
            self._record(path, body, None, 200)
            return self._json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
        if path != "/v1/messages":
            return self._unknown(path, body)
        if not isinstance(body.get("messages"), list):
            return self._bad(path, body, "messages: a list is required")
        chosen = pick(app.turns, body)
        name, reply = (chosen[0], chosen[1].reply) if chosen else (None, FALLBACK)
        if chosen is None:
            log.warning("model server: no scripted turn matched a request (model %s, %d "
                        "messages)", body.get("model"), len(body["messages"]))
        status = reply.error.status if reply.error is not None else 200
        self._record(path, body, name, status)
        if reply.stall:
            app._stopping.wait()
            self.close_connection = True
            return None
        if reply.error is not None:
            return self._error(reply.error.status, reply.error.type, reply.error.message)
        msg_id = f"msg_scripted_{app.next_id():06d}"
        if body.get("stream"):
            return self._stream(body, reply, msg_id)
        return self._json(200, _message(body, reply, msg_id, app))

    def _unknown(self, path: str, body: dict[str, Any]) -> None:
        log.warning("model server: %s %s: no such endpoint", self.command, self.path)
        self._record(path, body, None, 404)
        self._error(404, "not_found_error", f"no route {self.command} {path}")

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/api/hello" and self.command in ("GET", "HEAD"):  # the CLI's reachability probe (claude auth status sends it)
            self._record(path, {}, None, 200)
            if self.command == "HEAD":
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                return None
            return self._json(200, {"message": "hello"})
        self._unknown(path, {})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

    def _stream(self, body: dict[str, Any], reply: Reply, msg_id: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.send_header("request-id", f"req_{msg_id}")
        self.end_headers()
        self.close_connection = True
        usage = reply.usage
        app = self.server.app

        def event(name: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        def delta(index: int, d: dict[str, Any]) -> None:
            event("content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": d})

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
                for i in range(0, max(len(block.text), 1), CHUNK):
                    delta(index, {"type": "text_delta", "text": block.text[i:i + CHUNK]})
            else:
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "tool_use",
                                                                "id": _tool_id(app),
                                                                "name": block.name, "input": {}}})
                text = json.dumps(block.input)
                half = len(text) // 2
                for part in (text[:half], text[half:]):
                    delta(index, {"type": "input_json_delta", "partial_json": part})
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": reply.stop(), "stop_sequence": None},
                                "usage": {"output_tokens": usage.output_tokens}})
        event("message_stop", {"type": "message_stop"})
        self.wfile.flush()


def _tool_id(app: ModelServer) -> str:
    return f"toolu_scripted_{app.next_id():06d}"


def _message(body: dict[str, Any], reply: Reply, msg_id: str, app: ModelServer) -> dict[str, Any]:
    content = []
    for block in reply.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        else:
            content.append({"type": "tool_use", "id": _tool_id(app),
                            "name": block.name, "input": block.input})
    return {"id": msg_id, "type": "message", "role": "assistant", "model": body.get("model", ""),
            "content": content, "stop_reason": reply.stop(), "stop_sequence": None,
            "usage": reply.usage.model_dump()}
