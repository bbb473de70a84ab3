"""A service that cannot bind its port says so in one log line and exits; supervisord
retries it without giving up, and `ccaa up` reports it while it waits."""

from __future__ import annotations

import configparser
import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, _alive
from tests.integration.test_stack_e2e import CONFIG, ccaa


def held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["services.hub", "services.orchestrator"])
def test_a_port_in_use_is_one_clear_log_line_and_exit_code_4(tmp_path, module):
    sock = held_port()
    port = sock.getsockname()[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--hub", "tcp://127.0.0.1:0", "--pub",
             "tcp://127.0.0.1:0", "--sub", "tcp://127.0.0.1:0", "--metrics-port", str(port),
             "--set", f'data_dir="{tmp_path}"'],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        sock.close()
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "bind.failed" and entry["level"] == "error"
    assert entry["address"] == f"127.0.0.1:{port}" and entry["setting"] == "--metrics-port"
    assert entry["message"] == (f"cannot listen on 127.0.0.1:{port} for HTTP (/metrics) "
                                "(Address already in use); change --metrics-port or stop "
                                "what holds it")


def test_supervisord_never_gives_up_on_a_service():
    conf = configparser.RawConfigParser()
    conf.read(ROOT / "supervisord.conf")
    programs = [s for s in conf.sections() if s.startswith("program:")]
    assert len(programs) == 6
    for section in programs:
        assert conf.getint(section, "startretries") >= 10_000, section
        assert conf.get(section, "autorestart") == "true", section


@pytest.mark.timeout(180)
def test_ccaa_up_reports_a_service_that_cannot_bind_and_comes_up_once_it_can(tmp_path):
    sock = held_port()
    port = sock.getsockname()[1]
    config = tmp_path / "ccaa.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", tmp=tmp_path)
                      .replace("[metrics.ports]\nhub = 0", f"[metrics.ports]\nhub = {port}"))
    pidfile = tmp_path / "data" / "run" / "supervisord.pid"
    up = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--config",
                           str(config), "--timeout", "120"], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    tree: set[int] = set()
    try:
        said = ""
        deadline = time.monotonic() + 60
        while "hub is restarting: cannot listen on" not in said:
            line = up.stderr.readline()
            assert line or up.poll() is None, f"ccaa up ended: {said}"
            said += line
            assert time.monotonic() < deadline, said
        assert f"127.0.0.1:{port} for HTTP (/metrics)" in said
        assert "metrics.ports.hub" in said
        sock.close()  # the port is free: supervisord's next retry brings the hub up
        out, err = up.communicate(timeout=120)
        assert up.returncode == 0, said + err
        assert "ccaa is up" in out
        sup = psutil.Process(int(pidfile.read_text()))
        tree = {sup.pid} | {c.pid for c in sup.children(recursive=True)}
    finally:
        sock.close()
        if up.poll() is None:
            up.kill()
            up.communicate()
        down = ccaa("down", config=config)
        leftover = [p for p in tree if _alive(p)]
        for pid in leftover:
            os.kill(pid, 9)
    assert down.returncode == 0 and leftover == []
