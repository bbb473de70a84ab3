"""Agents' /metrics in a port range (a firewall opens one range per host) and the address
other hosts reach it at."""

import asyncio
import socket

import pytest

from libs.config import ConfigError, load_config
from libs.http import HttpServer
from libs.runner import BindError

pytestmark = pytest.mark.timeout(20)


def _free_range(n: int) -> range:
    """n consecutive ports that are free now (probed by binding them)."""
    for start in range(20000, 60000, 97):
        socks = []
        try:
            for port in range(start, start + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return range(start, start + n)
    raise RuntimeError("no free port range")


def test_takes_the_first_free_port_of_the_range_and_says_when_none_is_left():
    ports = _free_range(2)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", ports[0]))
    blocker.listen()

    async def go():
        first = HttpServer({}, "127.0.0.1", setting="metrics.agent_ports")
        await first.start(ports)
        assert first.port == ports[1]
        second = HttpServer({}, "127.0.0.1", setting="metrics.agent_ports")
        with pytest.raises(BindError, match="every port in the range is in use") as exc:
            await second.start(ports)
        assert exc.value.setting == "metrics.agent_ports"
        await first.close()

    try:
        asyncio.run(go())
    finally:
        blocker.close()


def test_advertised_address_and_range_setting():
    c = load_config(environ={}, overrides={"metrics": {
        "host": "0.0.0.0", "advertise_host": "node-b.example", "agent_ports": "9500-9502"}})
    assert c.metrics.advertised(c.metrics.host) == "node-b.example"
    assert list(c.metrics.port_range()) == [9500, 9501, 9502]
    wildcard = load_config(environ={}, overrides={"metrics": {"host": "0.0.0.0"}})
    assert wildcard.metrics.advertised("0.0.0.0") == socket.getfqdn()  # not 0.0.0.0
    assert load_config(environ={}).metrics.advertised("127.0.0.1") == "127.0.0.1"
    with pytest.raises(ConfigError, match="agent_ports"):
        load_config(environ={}, overrides={"metrics": {"agent_ports": "9500"}})
    with pytest.raises(ConfigError, match="FIRST <= LAST"):
        load_config(environ={}, overrides={"metrics": {"agent_ports": "9599-9500"}})
