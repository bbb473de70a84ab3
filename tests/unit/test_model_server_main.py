"""`python -m services.model_server`: the ready line, serving, recording, a clean exit on
SIGTERM/SIGINT, and exit 2 for a script that cannot be loaded."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "model_scripts"


def start(*args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "services.model_server", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def ready_line(proc: subprocess.Popen[bytes], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if readable:
            line = proc.stdout.readline()
            assert line, f"exited early: {proc.wait(5)} {proc.stderr.read().decode()}"
            return json.loads(line)
    raise AssertionError("no ready line")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_serves_records_and_exits_0_on_signal(tmp_path, sig):
    record = tmp_path / "rec.jsonl"
    proc = start("--script", str(SCRIPTS / "model_server_write_edit.yaml"),
                 "--script", str(SCRIPTS / "model_server_error.yaml"), "--record", str(record))
    try:
        ready = ready_line(proc)
        assert ready["event"] == "ready" and ready["url"].startswith("http://127.0.0.1:")
        assert ready["turns"] == 5
        host, port = ready["url"].removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = {"model": "m", "stream": False, "max_tokens": 10,
                "messages": [{"role": "user", "content": "MS-WRITE-EDIT: go"}]}
        conn.request("POST", "/v1/messages?beta=true", body=json.dumps(body))
        resp = conn.getresponse()
        msg = json.loads(resp.read())
        conn.close()
        assert resp.status == 200 and msg["content"][-1]["name"] == "Write"
        os.killpg(proc.pid, sig)
        assert proc.wait(10) == 0
        line = json.loads(record.read_text().splitlines()[0])
        assert line["matched"] == "model_server_write_edit#1"
    finally:
        kill_group(proc)


@pytest.mark.timeout(60)
def test_a_bad_script_exits_2_with_a_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns: [{reply: {}}]")
    proc = start("--script", str(bad))
    try:
        assert proc.wait(30) == 2
        assert proc.stdout.read() == b""
        assert "bad.yaml" in proc.stderr.read().decode()
    finally:
        kill_group(proc)


@pytest.mark.timeout(30)
def test_main_help_describes_the_script_format(capsys):
    from services.model_server.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--script", "--record", "prompt_contains", "last_tool_result_contains",
                 "stall", "ANTHROPIC_BASE_URL"):
        assert word in out
