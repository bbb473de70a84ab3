"""What every service's ``__main__`` shares: flags, config, logging, metrics server,
signals and an ordered shutdown."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any, Awaitable, Callable

from libs import security, zmqio
from libs.config import ConfigError, SystemConfig, flag_overrides, load_config
from libs.log import get_logger, setup_logging


class BindError(Exception):
    """A service cannot listen where its configuration says (a port in use, an address
    not on this host). Reported as one log line; the process exits with EXIT_BIND so its
    supervisor retries it later."""

    def __init__(self, what: str, address: str, setting: str, error: str):
        super().__init__(f"cannot listen on {address} for {what} ({error}); change {setting} "
                         "or stop what holds it")
        self.what, self.address, self.setting, self.error = what, address, setting, error


EXIT_BIND = 4


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="TOML config file (default: $CCAA_CONFIG)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set communication.heartbeat_interval=0.5",
    )
    parser.add_argument("--hub", help="hub ROUTER endpoint, e.g. tcp://10.0.0.5:5555")
    parser.add_argument("--pub", help="hub XSUB endpoint (publishers)")
    parser.add_argument("--sub", help="hub XPUB endpoint (subscribers)")
    parser.add_argument("--metrics-port", type=int, help="port for /metrics (0 = ephemeral)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def config_from_args(args: argparse.Namespace) -> SystemConfig:
    return load_config(args.config, overrides=overrides_from_args(args))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the common flags give (--set, --hub, --pub, --sub)."""
    overrides = flag_overrides(args.set)
    comm: dict[str, Any] = {}
    if args.hub:
        comm["router_endpoint"] = args.hub
    if args.pub:
        comm["pub_endpoint"] = args.pub
    if args.sub:
        comm["sub_endpoint"] = args.sub
    if comm:
        overrides.setdefault("communication", {}).update(comm)
    return overrides


def derive_endpoint(router: str, port_offset: int) -> str:
    """tcp://host:5555 -> tcp://host:5556 for offset 1 (the default port layout)."""
    head, _, port = router.rpartition(":")
    if not router.startswith("tcp://") or not port.isdigit():
        raise ConfigError(f"cannot derive the event endpoints from {router!r}; pass --pub/--sub")
    return f"{head}:{int(port) + port_offset}"


def announce(**fields: Any) -> None:
    """One JSON line on stdout saying the process is ready (tests and `ccaa up` read it)."""
    print(json.dumps({"event": "ready", **fields}), flush=True)


#: CCAA_EVENT_LOOP=asyncio: every service on asyncio's own loop (uvloop: where it may)
EVENT_LOOP_ENV = "CCAA_EVENT_LOOP"


def loop_factory(spawns_processes: bool = False
                 ) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop a service runs on: uvloop, whose turns cost less (a routed message
    takes several), where it is installed; None (asyncio's own) for a service that
    spawns and watches processes (uvloop starts a process in about 1.9 ms against
    asyncio's 1.1), when ``CCAA_EVENT_LOOP=asyncio`` says so, or without uvloop."""
    choice = os.environ.get(EVENT_LOOP_ENV, "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise ConfigError(f"{EVENT_LOOP_ENV} must be uvloop or asyncio, not {choice!r}")
    if spawns_processes or choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_main(setup: Callable[[argparse.Namespace, SystemConfig], Awaitable[int]],
             parser: argparse.ArgumentParser, argv: list[str] | None = None, *,
             spawns_processes: bool = False) -> int:
    """Parse flags, load the configuration and keys, run ``setup`` on an event loop
    (see loop_factory) and turn the usual ways of ending into exit codes."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
        comm = config.communication
        own = parser.prog.removeprefix("ccaa-")  # a service's own key, if keys_dir has it
        own = {"agent": comm.agent_key, "controller": comm.node_key}.get(own, own)
        security.configure(comm.curve, comm.keys_dir,
                           security.key_for(comm.keys_dir, own, comm.client_key))
        factory = loop_factory(spawns_processes)
    except (ConfigError, security.KeyError_) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(setup(args, config))
    except KeyboardInterrupt:
        return 0
    except BindError as exc:
        get_logger(parser.prog.removeprefix("ccaa-")).error(
            "bind.failed", message=str(exc), what=exc.what, address=exc.address,
            setting=exc.setting, error=exc.error)
        return EXIT_BIND
    finally:
        zmqio.shutdown()  # what the last sockets hold (a goodbye to the hub) goes out


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
