"""Notifications: telling people that a session ended or needs someone.

Each notification goes to every configured channel that wants its event: webhooks (a JSON
object, or a Slack-compatible ``{"text": ...}`` body) and a command (the notification as
JSON on its stdin). A failed delivery is retried with backoff; every attempt is one line of
DATA_DIR/notifications.jsonl (the delivery log) and is counted on /metrics. Deliveries run
beside the reporter's loop and never hold it up; past ``MAX_PENDING`` undelivered ones, a
new notification is dropped (counted and logged) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from libs.config import NotificationsConfig, WebhookConfig
from libs.log import EventLogger, get_logger

#: deliveries waiting or being retried at once, at most
MAX_PENDING = 200
#: the delivery log is rotated (one old copy kept) past this size
LOG_MAX_BYTES = 10 * 1024 * 1024
#: what a command's failure keeps of its stderr
STDERR_TAIL = 300


@dataclass
class Notification:
    event: str  # succeeded | failed | partial | cancelled | needs_attention
    session_id: str
    summary: str  # one line, for people
    detail: str = ""
    reason: str = ""  # needs_attention: stalled | budget | unassignable
    ts: float = field(default_factory=time.time)
    dashboard_url: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"source": "ccaa", **asdict(self)}

    def slack(self) -> dict[str, Any]:
        icon = {"succeeded": ":white_check_mark:", "failed": ":x:", "partial": ":warning:",
                "cancelled": ":heavy_minus_sign:", "needs_attention": ":eyes:"}
        text = f"{icon.get(self.event, '')} *ccaa* {self.summary}".strip()
        if self.dashboard_url:
            text += f" (<{self.dashboard_url}|dashboard>)"
        return {"text": text}


class Channel:
    """One place notifications go: its name in the log, the events it wants, a sender."""

    def __init__(self, kind: str, name: str, events: list[str],
                 send: Callable[[Notification], Awaitable[None]]):
        self.kind, self.name, self.events, self.send = kind, name, set(events), send


class DeliveryError(Exception):
    pass


def webhook_channel(number: int, hook: WebhookConfig, default_events: list[str],
                    timeout: float) -> Channel:
    url = urlsplit(hook.url)
    name = f"webhook {number} {url.scheme}://{url.netloc}"  # the path may be a secret

    def post(body: bytes) -> None:
        request = urllib.request.Request(hook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "ccaa-reporter",
            **hook.headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryError(str(getattr(exc, "reason", exc))) from None

    async def send(n: Notification) -> None:
        body = n.slack() if hook.format == "slack" else n.as_json()
        await asyncio.to_thread(post, json.dumps(body).encode())

    return Channel("webhook", name, hook.events or default_events, send)


def command_channel(argv: list[str], events: list[str], timeout: float) -> Channel:
    async def send(n: Notification) -> None:
        args = [a.replace("{event}", n.event).replace("{session}", n.session_id)
                .replace("{summary}", n.summary) for a in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DeliveryError(f"cannot start {args[0]!r}: {exc}") from None
        try:
            _, err = await asyncio.wait_for(
                proc.communicate(json.dumps(n.as_json()).encode()), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeliveryError(f"took longer than {timeout:g}s") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-STDERR_TAIL:]
            raise DeliveryError(f"exit code {proc.returncode}" + (f": {tail}" if tail else ""))

    return Channel("command", f"command {argv[0]}", events, send)


class Notifier:
    def __init__(self, config: NotificationsConfig, log_path: Path, registry: CollectorRegistry,
                 log: EventLogger | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.config = config
        self.log_path = log_path
        self.log = log or get_logger("reporter")
        self.sleep = sleep
        self.channels = [webhook_channel(i, h, config.events, config.timeout)
                         for i, h in enumerate(config.webhooks, 1)]
        if config.command:
            self.channels.append(command_channel(config.command, config.events,
                                                 config.timeout))
        self.pending: set[asyncio.Task] = set()
        self.sent = Counter("ccaa_notifications_total", "notification deliveries, by channel "
                            "kind and result (delivered, failed after every retry, dropped "
                            "with too many pending)", ["channel", "result"], registry=registry)
        self.attempts = Counter("ccaa_notification_attempts_total", "delivery attempts, by "
                                "channel kind and whether they worked", ["channel", "ok"],
                                registry=registry)
        for kind in ("webhook", "command"):
            for result in ("delivered", "failed", "dropped"):
                self.sent.labels(kind, result)
            for ok in ("true", "false"):
                self.attempts.labels(kind, ok)

    def notify(self, n: Notification) -> None:
        n.dashboard_url = n.dashboard_url or self.config.dashboard_url
        for channel in self.channels:
            if n.event not in channel.events:
                continue
            if len(self.pending) >= MAX_PENDING:
                self.sent.labels(channel.kind, "dropped").inc()
                self._record(channel, n, 0, False, "dropped: too many deliveries pending")
                continue
            task = asyncio.ensure_future(self._deliver(channel, n))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _deliver(self, channel: Channel, n: Notification) -> None:
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                await channel.send(n)
            except DeliveryError as exc:
                self.attempts.labels(channel.kind, "false").inc()
                self._record(channel, n, attempt, False, str(exc))
                if attempt == attempts:
                    self.sent.labels(channel.kind, "failed").inc()
                    self.log.warning("notification.failed", channel=channel.name,
                                     session=n.session_id, notification=n.event,
                                     attempts=attempt, error=str(exc))
                    return
                await self.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
            else:
                self.attempts.labels(channel.kind, "true").inc()
                self.sent.labels(channel.kind, "delivered").inc()
                self._record(channel, n, attempt, True, "")
                return

    def _record(self, channel: Channel, n: Notification, attempt: int, ok: bool,
                error: str) -> None:
        line = json.dumps({"ts": round(time.time(), 3), "channel": channel.name,
                           "event": n.event, "reason": n.reason, "session": n.session_id,
                           "attempt": attempt, "ok": ok, "error": error})
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self.log_path.exists() and self.log_path.stat().st_size > LOG_MAX_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".jsonl.1"))
            with open(self.log_path, "a") as f:
                f.write(line + "\n")
        except OSError as exc:  # the log is a record, not a reason to stop delivering
            self.log.warning("notification.log_failed", error=str(exc))

    async def close(self, timeout: float = 5.0) -> None:
        """Let deliveries under way finish for a moment, then stop the rest."""
        if self.pending:
            await asyncio.wait(set(self.pending), timeout=timeout)
        for task in list(self.pending):
            task.cancel()
