"""Every service answers /healthz while it runs and /ready only when it can work: not
before it registered with the hub, not once its state database is gone; neither needs the
reporter's token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.test_bus_flow import start_services
from tests.integration.test_node import free_ports


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_status(url: str, status: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, body = get(url)
        except (urllib.error.URLError, ConnectionError):
            got, body = 0, {}
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{url}: {got} {body}, not {status}"
        time.sleep(0.05)  # wait-ok: polling an HTTP endpoint under a deadline


@pytest.mark.timeout(90)
def test_ready_means_registered_and_the_database_sound(procs, bus, tmp_path):
    assert get(bus.metrics.removesuffix("/metrics") + "/ready")[0] == 200  # the hub

    # an orchestrator with no hub to reach: alive, not ready, and says why
    (port,) = free_ports(1)
    args = bus.args()
    args[args.index("--hub") + 1] = f"ipc://{tmp_path}/nobody.sock"
    args[args.index("--metrics-port") + 1] = str(port)
    procs.service("services.orchestrator", *args, "--db", str(tmp_path / "alone.db"),
                  name="alone")
    base = f"http://127.0.0.1:{port}"
    assert wait_status(base + "/healthz", 200)["status"] == "ok"
    assert wait_status(base + "/ready", 503)["reason"] == "not registered with the hub"

    ready = start_services(procs, bus)
    for module, line in ready.items():
        base = line["metrics"].removesuffix("/metrics")
        assert get(base + "/healthz")[0] == 200, module
        assert get(base + "/ready") == (200, {"ready": True}), module

    # the orchestrator's database deleted under it: no longer ready, and it says why
    orch = ready["services.orchestrator"]["metrics"].removesuffix("/metrics")
    (bus.data_dir / "orchestrator.db").unlink()
    reason = wait_status(orch + "/ready", 503)["reason"]
    assert "orchestrator.db" in reason, reason
    assert get(orch + "/healthz")[0] == 200


@pytest.mark.timeout(60)
def test_health_needs_no_token_where_everything_else_does(procs, bus):
    (port,) = free_ports(1)
    args = bus.args()
    args[args.index("--metrics-port") + 1] = str(port)
    procs.ready(procs.service("services.reporter", *args, "--set",
                              'reporting.http_token="sesame"'))
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/ready")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "/metrics", timeout=5)
    assert refused.value.code == 401
