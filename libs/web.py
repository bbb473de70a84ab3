"""A Starlette application served by uvicorn on the service's own event loop: for the
reporter's dashboard (pages, JSON, server-sent events). It offers the same face as
libs.http.HttpServer (start, close, port, url), takes the same GET routes (/metrics,
/healthz, /ready, ...), and requires the same token (a Bearer header or ?token=) except on
the health paths."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import os
import socket
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from libs.http import OPEN_PATHS, Handler


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's stop signals stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Token:
    """Every request but the health checks must carry the token."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and scope["path"] not in OPEN_PATHS:
            request = Request(scope)
            given = [request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
                     request.query_params.get("token", "")]
            if not any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given):
                response = PlainTextResponse(
                    "a token is required: send 'Authorization: Bearer TOKEN' or add "
                    "?token=TOKEN\n", status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def handler_route(path: str, handler: Handler) -> Route:
    """A libs.http handler ((status, content type, body) from the query) as a route."""

    async def endpoint(request: Request) -> Response:
        result = handler(dict(request.query_params))
        if asyncio.iscoroutine(result):
            result = await result
        status, ctype, body = result  # type: ignore[misc]
        return Response(body, status_code=status, media_type=ctype)

    return Route(path, endpoint, methods=["GET"])


class AppServer:
    def __init__(self, routes: dict[str, Handler], host: str = "127.0.0.1", port: int = 0,
                 setting: str = "the metrics port", token: str = "",
                 extra: list[BaseRoute] | None = None):
        self.host, self.port, self.setting, self.token = host, port, setting, token
        app = Starlette(routes=[*(extra or []), *(handler_route(p, h) for p, h in
                                                   routes.items())])
        self.app: Any = _Token(app, token)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, ports: range | None = None) -> None:
        from libs.runner import BindError

        sock = None
        for port in ports or [self.port]:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
                break
            except OSError as exc:
                sock.close()
                sock = None
                if ports and exc.errno == errno.EADDRINUSE:
                    continue
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise BindError("HTTP (dashboard)", f"{self.host}:{port}", self.setting,
                                reason) from None
        if sock is None:
            assert ports is not None
            raise BindError("HTTP (dashboard)", f"{self.host}:{ports.start}-{ports.stop - 1}",
                            self.setting, "every port in the range is in use")
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = _Server(config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + 10
        while not self._server.started:  # serving once this returns
            if self._task.done():
                self._task.result()  # its failure, raised here
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the dashboard's HTTP server did not start within 10 s")
            await asyncio.sleep(0.01)  # wait-ok: uvicorn's startup, under a deadline

    async def close(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except asyncio.TimeoutError:
                self._server.force_exit = True
                self._task.cancel()
