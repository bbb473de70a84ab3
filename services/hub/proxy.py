"""The event proxy: XSUB (publishers connect) <-> XPUB (subscribers connect), in a thread.

The hub's own events enter through an inproc endpoint on the same XSUB socket.
"""

from __future__ import annotations

import threading
from typing import Callable

import zmq

from libs.zmqio import bind, socket

INPROC = "inproc://ccaa-hub-events"


class EventProxy:
    def __init__(self, ctx: zmq.Context, pub_endpoint: str, sub_endpoint: str,
                 secure: Callable[[zmq.Socket], None] | None = None):
        self.ctx = ctx
        self.xsub = socket(ctx, zmq.XSUB)
        self.xpub = socket(ctx, zmq.XPUB)
        if secure is not None:  # CURVE server on both, before they bind
            secure(self.xsub)
            secure(self.xpub)
        self.pub_endpoint = bind(self.xsub, pub_endpoint)
        bind(self.xsub, INPROC)
        self.sub_endpoint = bind(self.xpub, sub_endpoint)
        self._control_addr = f"inproc://ccaa-hub-proxy-control-{id(self)}"
        self._control = socket(ctx, zmq.PAIR)
        self._control.bind(self._control_addr)
        self._thread = threading.Thread(target=self._run, name="event-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        control = socket(self.ctx, zmq.PAIR)
        control.connect(self._control_addr)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            control.close(linger=0)
            self.xsub.close(linger=0)
            self.xpub.close(linger=0)

    def stop(self) -> None:
        self._control.send(b"TERMINATE")
        self._thread.join(timeout=5)
        self._control.close(linger=0)
