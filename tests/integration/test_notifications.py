"""Notifications reach a real local HTTP receiver (generic JSON and Slack bodies) and a
command hook, from a live bus: a session that succeeds, one that fails, one whose task
no agent can take; a webhook that fails at first is retried and the delivery log says so."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.cli import run_cli
from tests.integration.test_bus_flow import SERVICES, start_agent


class Receiver:
    """An HTTP server that records every POST; /flaky answers 500 to its first one."""

    def __init__(self):
        self.posts: list[tuple[str, dict, dict]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    first = not any(p == self.path for p, _, _ in receiver.posts)
                    receiver.posts.append((self.path, dict(self.headers), body))
                status = 500 if self.path == "/flaky" and first else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [b for p, _, b in self.posts if p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def wait_until(what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # wait-ok: polling under a deadline


@pytest.mark.timeout(120)
def test_sessions_ending_and_needing_attention_are_told_with_retries(procs, bus, tmp_path):
    receiver = Receiver()
    hooked = tmp_path / "hook.jsonl"
    hook = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write("
            "sys.stdin.read().strip() + '\\n')", str(hooked)]
    settings = [
        "--set", "agent_hierarchy.spare.count=0",
        "--set", 'agent_hierarchy.spare.executor="command"',
        "--set", "notifications.retry_backoff=0.2",
        "--set", f"notifications.command={json.dumps(hook)}",
        "--set", "notifications.webhooks=["
                 f'{{url="{receiver.url}/json", headers={{Authorization="Bearer t0k"}}}}, '
                 f'{{url="{receiver.url}/flaky", format="slack", '
                 'events=["failed", "needs_attention"]}]',
        "--set", 'notifications.dashboard_url="http://dash.example/"']
    try:
        ready = {m: procs.ready(procs.service(m, *bus.args(), *settings)) for m in SERVICES}
        start_agent(procs, bus, "agent-a")
        repo = tmp_path / "repo"
        repo.mkdir()

        def submit(*args: str) -> str:
            done = run_cli(procs, bus, "submit", "RUN", *args, "--repo", str(repo))
            assert done.returncode == 0, done.stderr
            return done.stdout.split()[1]

        ok, bad, stuck = submit("true"), submit("exit 2"), submit("true", "--role", "spare")
        wait_until("the JSON webhook to hear of both ends and the stuck task", lambda: {
            (b["event"], b["session_id"]) for b in receiver.bodies("/json")} >= {
            ("succeeded", ok), ("failed", bad), ("needs_attention", stuck)})
        by_event = {b["event"]: b for b in receiver.bodies("/json")}
        assert by_event["needs_attention"]["reason"] == "unassignable"
        assert "spare" in by_event["needs_attention"]["summary"]
        assert by_event["failed"]["source"] == "ccaa"
        headers = next(h for p, h, _ in receiver.posts if p == "/json")
        assert headers["Authorization"] == "Bearer t0k"
        assert headers["Content-Type"] == "application/json"

        # the Slack-format hook wants failures and attention only; its first POST got a
        # 500 and was sent again
        wait_until("the flaky hook's deliveries", lambda: len(receiver.bodies("/flaky")) >= 3)
        slack = receiver.bodies("/flaky")
        assert all(set(b) == {"text"} for b in slack)
        assert not any(ok in b["text"] for b in slack)
        assert any(bad in b["text"] and ":x:" in b["text"] for b in slack)
        assert all("<http://dash.example/|dashboard>" in b["text"] for b in slack)

        # the command hook got each notification as JSON on its stdin
        wait_until("the command hook", lambda: hooked.exists()
                   and len(hooked.read_text().splitlines()) >= 3)
        hook_events = {(json.loads(line)["event"], json.loads(line)["session_id"])
                       for line in hooked.read_text().splitlines()}
        assert {("succeeded", ok), ("failed", bad)} <= hook_events

        # the delivery log: the 500 and its retry, each attempt one line (written once
        # the reporter has the receiver's answer, so after the receiver has the body)
        delivery_log = bus.data_dir / "notifications.jsonl"

        def flaky_attempts() -> list[dict]:
            lines = delivery_log.read_text().splitlines() if delivery_log.exists() else []
            return [r for r in map(json.loads, lines)
                    if r["channel"] == f"webhook 2 {receiver.url}"]

        wait_until("the flaky hook's retry in the delivery log",
                   lambda: any(r["attempt"] == 2 for r in flaky_attempts()))
        log = [json.loads(line) for line in delivery_log.read_text().splitlines()]
        # the hook's two notifications are delivered concurrently: whichever reached the
        # receiver first got the 500, and the other may be logged before it
        flaky = flaky_attempts()
        failed = [r for r in flaky if not r["ok"]]
        assert [(r["attempt"], r["error"]) for r in failed] == [(1, "HTTP 500")]
        retried = (failed[0]["event"], failed[0]["session"])
        assert [r["attempt"] for r in flaky if (r["event"], r["session"]) == retried
                and r["ok"]] == [2]
        assert not any("/flaky" in r["channel"] for r in log)  # paths may be secrets

        metrics = ready["services.reporter"]["metrics"]
        with urllib.request.urlopen(metrics + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'ccaa_notifications_total{channel="webhook",result="failed"} 0.0' in text
        assert 'ccaa_notification_attempts_total{channel="webhook",ok="false"} 1.0' in text
    finally:
        receiver.close()
