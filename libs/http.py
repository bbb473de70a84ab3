"""A small asyncio HTTP/1.1 server for /metrics and JSON APIs, run on the service's own loop.

Routes map a path to a handler returning ``(status, content_type, body_bytes)``. Only GET
is served; anything else gets 405, unknown paths 404, oversize or garbled requests 400.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import os
from typing import Any, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Response = tuple[int, str, bytes]
Handler = Callable[[dict[str, str]], Response | Awaitable[Response]]

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}
#: paths served without the token: they say only whether the process is well
OPEN_PATHS = ("/healthz", "/ready")
_MAX_REQUEST_LINE = 8192
_MAX_HEADERS = 100


def json_response(obj: Any, status: int = 200) -> Response:
    return status, "application/json", json.dumps(obj, default=str).encode()


def health_routes(not_ready: Callable[[], str]) -> dict[str, Handler]:
    """``/healthz``: 200 while the process serves HTTP at all (its loop turns).
    ``/ready``: 200 when it can do its work, else 503 with the reason ``not_ready()``
    gives (e.g. not registered with the hub, the state database gone)."""

    def healthz(_query: dict[str, str]) -> Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    def ready(_query: dict[str, str]) -> Response:
        reason = not_ready()
        if reason:
            return json_response({"ready": False, "reason": reason}, status=503)
        return json_response({"ready": True})

    return {"/healthz": healthz, "/ready": ready}


def metrics_route(registry: CollectorRegistry) -> Handler:
    def handler(_query: dict[str, str]) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return handler


class HttpServer:
    def __init__(self, routes: dict[str, Handler], host: str = "127.0.0.1", port: int = 0,
                 setting: str = "the metrics port", token: str = ""):
        self.routes = routes
        self.host = host
        self.port = port
        self.setting = setting  # named when the port cannot be bound
        self.token = token  # when set, every request must carry it
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, ports: range | None = None) -> None:
        """Listen on ``self.port``, or on the first free port of ``ports``."""
        from libs.runner import BindError

        for port in ports or [self.port]:
            try:
                self._server = await asyncio.start_server(self._serve, self.host, port)
                break
            except OSError as exc:
                if ports and exc.errno == errno.EADDRINUSE:
                    continue
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise BindError("HTTP (/metrics)", f"{self.host}:{port}", self.setting,
                                reason) from None
        else:
            raise BindError("HTTP (/metrics)", f"{self.host}:{ports.start}-{ports.stop - 1}",
                            self.setting, "every port in the range is in use") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await asyncio.wait_for(self._handle(reader), timeout=10)
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        try:
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> Response:
        line = await reader.readline()
        if not line or len(line) > _MAX_REQUEST_LINE:
            return 400, "text/plain", b"bad request\n"
        bearer = ""
        for _ in range(_MAX_HEADERS):
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "authorization":
                bearer = value.strip().removeprefix("Bearer ").strip()
        else:
            return 400, "text/plain", b"too many headers\n"
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        if method != "GET":
            return 405, "text/plain", b"only GET is served\n"
        path, _, query = target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if self.token and path not in OPEN_PATHS and not any(hmac.compare_digest(given.encode(), self.token.encode())
                                  for given in (bearer, params.get("token", ""))):
            return 401, "text/plain", (b"a token is required: send 'Authorization: Bearer "
                                       b"TOKEN' or add ?token=TOKEN\n")
        handler = self.routes.get(path)
        if handler is None:
            return 404, "text/plain", f"no route {path}\n".encode()
        try:
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        except Exception as exc:  # a handler bug must not kill the server
            return 500, "text/plain", f"internal error: {exc}\n".encode()
