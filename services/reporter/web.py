"""The reporter's dashboard on the web: the overview and a page per session (HTML from
pages.py), the session's status as JSON (asked of the orchestrator), and every bus event
live as server-sent events, so pages change without polling or reloading."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import Message
from protocols.command import CommandStatus
from protocols.events import PeerEvent, SessionEvent, TaskEvent
from protocols.task import TaskProgress
from services.reporter import pages

#: events a slow page may fall behind by before it misses some (it then reloads its view)
STREAM_BACKLOG = 1000
#: seconds between keep-alive comments on an idle stream
KEEPALIVE_SECONDS = 15.0


def event_record(topic: str, msg: Message) -> dict[str, Any] | None:
    """What a page needs of one bus event (None: nothing)."""
    body = msg.body
    base = {"topic": topic, "ts": msg.header.ts}
    if isinstance(body, TaskEvent):
        return {**base, "session_id": body.session_id, "task_id": body.task_id,
                "state": body.state, "prev_state": body.prev_state,
                "agent_id": body.agent_id, "detail": body.detail[:300]}
    if isinstance(body, SessionEvent):
        return {**base, "session_id": body.session_id, "state": body.state,
                "detail": body.detail[:300]}
    if isinstance(body, TaskProgress):
        return {**base, "session_id": body.session_id, "task_id": body.task_id,
                "agent_id": body.agent_id, "kind": body.kind, "summary": body.summary[:200]}
    if isinstance(body, PeerEvent):
        return {**base, "name": body.name, "kind": body.kind, "role": body.role,
                "state": body.state, "host": body.host}
    return None


class EventStreams:
    """The pages' live streams: each event goes to every open stream, dropped for a
    stream that is too far behind (counted; the page sees a gap and refetches)."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.dropped = 0

    def publish(self, topic: str, msg: Message) -> None:
        if not self.queues:
            return
        record = event_record(topic, msg)
        if record is None:
            return
        for queue in self.queues:
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                self.dropped += 1

    async def stream(self, session: str, request: Request) -> AsyncIterator[str]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(STREAM_BACKLOG)
        self.queues.add(queue)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    record = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if record is None:
                    return
                if session and record.get("session_id") not in (session, None):
                    continue
                yield f"data: {json.dumps(record, default=str)}\n\n"
        finally:
            self.queues.discard(queue)

    def close(self) -> None:
        for queue in self.queues:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass


def routes(streams: EventStreams, peer: Callable[[], Peer | None],
           refresh_ms: int, live: bool = True) -> list[BaseRoute]:
    async def overview(_request: Request) -> Response:
        return HTMLResponse(pages.overview(refresh_ms, live))

    async def session_page(request: Request) -> Response:
        return HTMLResponse(pages.session(request.path_params["sid"], refresh_ms, live))

    async def session_json(request: Request) -> Response:
        me = peer()
        if me is None or not me.registered:
            return JSONResponse({"error": "the reporter is not connected to the bus"}, 503)
        try:
            reply = await me.request("orchestrator",
                                     CommandStatus(session_id=request.path_params["sid"],
                                                   attempts=True))
        except RequestFailed as exc:
            status = 404 if str(getattr(exc.code, "value", exc.code)) == "not_found" else 502
            return JSONResponse({"error": exc.reason}, status)
        except RequestTimeout as exc:
            return JSONResponse({"error": str(exc)}, 504)
        return JSONResponse(reply.body.model_dump(mode="json"))

    async def events(request: Request) -> Response:
        session = request.query_params.get("session", "")
        return StreamingResponse(streams.stream(session, request),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return [Route("/", overview), Route("/session/{sid}", session_page),
            Route("/api/session/{sid}", session_json), Route("/api/events", events)]
