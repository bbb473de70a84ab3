"""The reporter's HTTP endpoints require a token when it listens off loopback (made once
in the data directory, mode 0600), and stay open on loopback."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest


def get(url: str, token: str = "") -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.timeout(60)
def test_off_loopback_every_endpoint_needs_the_token(procs, bus):
    reporter = procs.service("services.reporter", *bus.args(),
                             "--set", 'metrics.host="0.0.0.0"')
    ready = procs.ready(reporter)
    port = urlsplit(ready["metrics"]).port
    base = f"http://127.0.0.1:{port}"
    token_file = bus.data_dir / "reporter.token"
    token = token_file.read_text().strip()
    assert len(token) >= 24 and stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    for path in ("/", "/api/summary", "/api/targets", "/metrics", "/session/s-1",
                 "/api/events", "/api/events?session=s-1"):
        assert get(base + path) == 401, path
        assert get(base + path, token="wrong") == 401, path
        assert get(base + path, token=token) == 200, path
    # what the dashboard's pages pass on (EventSource cannot send headers)
    assert get(f"{base}/api/summary?token={token}") == 200
    assert get(f"{base}/api/events?token={token}") == 200
    assert get(f"{base}/api/session/s-1") == 401
    assert get(f"{base}/healthz") == 200  # health checks need no token


@pytest.mark.timeout(60)
def test_on_loopback_no_token_is_needed(procs, bus):
    ready = procs.ready(procs.service("services.reporter", *bus.args()))
    assert get(ready["metrics"].removesuffix("/metrics") + "/api/summary") == 200
    assert not (bus.data_dir / "reporter.token").exists()
