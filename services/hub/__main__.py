"""python -m services.hub — the bus: ROUTER routing, peer registry, heartbeats, event proxy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

import zmq

from libs import security
from libs.config import SystemConfig
from libs.nodeconfig import shared_config
from libs.http import HttpServer, health_routes, metrics_route
from libs.log import get_logger
from libs.metrics import new_registry
from libs.runner import BindError, announce, common_parser, install_stop_signals, run_main
from libs.zmqio import Pump, bind, context, socket
from services.hub.proxy import INPROC, EventProxy
from services.hub.service import Hub



def port_of(endpoint: str) -> int:
    tail = endpoint.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def serve(args: argparse.Namespace, config: SystemConfig) -> int:
    # however serve ends (a port in use, a stop), the proxy and ZAP threads stop and the
    # sockets close before the process's context goes: none is closed under a live thread
    with contextlib.ExitStack() as cleanup:
        return await _serve(args, config, cleanup)


async def _serve(args: argparse.Namespace, config: SystemConfig,
                 cleanup: contextlib.ExitStack) -> int:
    log = get_logger("hub")
    comm = config.communication
    ctx = context()
    registry = new_registry()

    router = socket(ctx, zmq.ROUTER)
    cleanup.callback(router.close, linger=0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 100_000)
    router.setsockopt(zmq.RCVHWM, 100_000)
    # thousands of agents may connect at once; with ZeroMQ's default of 100 pending
    # connections the kernel drops their SYNs and TCP retries them seconds later
    router.setsockopt(zmq.BACKLOG, 4096)
    auth = None
    secure = None
    loop = asyncio.get_running_loop()

    def on_refused(key: str) -> None:  # on the ZAP thread; runs on the loop, once `hub` exists
        loop.call_soon_threadsafe(lambda: hub.refused_handshake(key))

    if comm.curve:
        try:
            auth = security.start_authenticator(ctx, comm.keys_dir, on_refused)
            cleanup.callback(auth.stop)
            security.apply_server(router, comm.keys_dir)
        except security.KeyError_ as exc:
            print(f"hub: {exc}", file=sys.stderr)
            return 2

        def secure(sock: zmq.Socket) -> None:
            security.apply_server(sock, comm.keys_dir)
    try:
        router_endpoint = bind(router, comm.router())
    except zmq.ZMQError as exc:
        raise BindError("the bus (ROUTER)", comm.router(), "communication.hub_port",
                        f"{os.strerror(exc.errno)}; is another hub running?") from None
    try:
        proxy = EventProxy(ctx, comm.pub(), comm.sub(), secure)
    except zmq.ZMQError as exc:
        raise BindError("events (XSUB, XPUB)", f"{comm.pub()}, {comm.sub()}",
                        "communication.pub_port / sub_port",
                        f"{os.strerror(exc.errno)}; is another hub running?") from None
    proxy.start()
    cleanup.callback(proxy.stop)
    events = socket(ctx, zmq.PUB)
    cleanup.callback(events.close, linger=0)
    events.connect(INPROC)

    hub = Hub(comm, send=lambda f: pump.send_now(f),
              publish=lambda f: events.send_multipart(f, flags=zmq.NOBLOCK), registry=registry,
              log=log)
    if auth is not None:
        hub.keyring = auth.keyring
    hub.shared_config = shared_config(config)
    hub.event_ports = (port_of(proxy.pub_endpoint), port_of(proxy.sub_endpoint))
    pump = Pump(router, hub.on_frames, user_ids=auth is not None)

    port = args.metrics_port if args.metrics_port is not None else config.metrics.ports.get("hub", 0)
    # ready as soon as it serves: its sockets are bound before this starts
    http = HttpServer({"/metrics": metrics_route(registry), **health_routes(lambda: "")},
                      config.metrics.host, port,
                      setting="--metrics-port" if args.metrics_port is not None
                      else "metrics.ports.hub")
    await http.start()

    stop = asyncio.Event()
    install_stop_signals(stop)
    if auth is not None:  # SIGHUP: re-read the allow-list (clients added or removed)
        def reload_keys() -> None:
            before = hub.keyring
            try:
                hub.keyring = auth.reload()
            except security.KeyError_ as exc:  # keep the keys we have
                log.error("keys.reload_failed", error=str(exc))
                return
            hub.keys_changed(before, hub.keyring)
            log.info("keys.reloaded", keys=len(hub.keyring.names))

        loop.add_signal_handler(signal.SIGHUP, reload_keys)

    async def liveness() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), comm.heartbeat_interval / 2)
            except asyncio.TimeoutError:
                hub.check_liveness()

    pump_task = asyncio.ensure_future(pump.run())
    live_task = asyncio.ensure_future(liveness())
    log.info("started", curve=comm.curve, router=router_endpoint, pub=proxy.pub_endpoint, sub=proxy.sub_endpoint,
             metrics=http.url, hub_id=hub.hub_id)
    announce(service="hub", router=router_endpoint, pub=proxy.pub_endpoint,
             sub=proxy.sub_endpoint, metrics=http.url, hub_id=hub.hub_id)
    stop_task = asyncio.ensure_future(stop.wait())
    await asyncio.wait({pump_task, live_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in (pump_task, live_task):
        if task.done():  # it must run until stopped: exit non-zero so supervisord restarts us
            error = task.exception() if not task.cancelled() else None
            log.error("task.ended", task="pump" if task is pump_task else "liveness",
                      error=repr(error) if error else "returned")
            code = 1
    log.info("stopping")
    pump.close()
    for task in (pump_task, live_task, stop_task):
        task.cancel()
    await asyncio.gather(pump_task, live_task, stop_task, return_exceptions=True)
    await http.close()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = common_parser("ccaa-hub", "The ccaa hub: routes messages between peers by "
                           "destination, tracks peers with heartbeats, proxies events.")
    return run_main(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
