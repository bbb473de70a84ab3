"""Peer lifecycle: register, registered, heartbeat, disconnect, error, registry queries."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field

from protocols.base import Body
from protocols.errors import ErrorCode


class PeerKind(str, Enum):
    SERVICE = "service"
    AGENT = "agent"
    CLIENT = "client"


class PeerState(str, Enum):
    """States a peer reports in heartbeats; the hub adds ``lost``."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    LOST = "lost"


class PeerRegister(Body):
    TYPE = "peer.register"
    name: str = Field(min_length=1, max_length=128)
    kind: PeerKind
    role: str = ""
    capabilities: list[str] = []
    capacity: int = Field(default=1, ge=0, le=1024)
    pid: int = 0
    host: str = ""
    metrics_url: str = ""
    #: the key from this peer's last ``peer.registered``: lets the same peer take its
    #: name back on a new socket while the old entry is still live (nothing else does)
    reclaim: str = Field(default="", max_length=64)
    #: the bus token (communication.token) when the hub requires one; the hub never
    #: stores, shows or logs it
    token: str = Field(default="", max_length=256)
    #: the operating-system user running the peer (as it says; the key is what binds)
    user: str = Field(default="", max_length=64)
    #: an agent running Claude Code: whether that CLI could authenticate when the agent
    #: started ("ok", else why not); "" when it runs no Claude Code
    auth: str = Field(default="", max_length=512)


class PeerRegistered(Body):
    TYPE = "peer.registered"
    name: str
    hub_id: str
    heartbeat_interval: float
    liveness: int
    reclaim: str = ""  # a secret for this registration; see PeerRegister.reclaim


class PeerHeartbeat(Body):
    TYPE = "peer.heartbeat"
    state: PeerState = PeerState.IDLE
    load: int = Field(default=0, ge=0)
    running: list[str] = []
    #: a controller's view of its host: cores, memory_mb, available_mb, load1
    host_stats: dict[str, float] = Field(default_factory=dict, max_length=16)


#: controllers are named per host: ``controller@<host>``
CONTROLLER = "controller"


def controller_name(host: str) -> str:
    return f"{CONTROLLER}@{host}"


def service_of(name: str) -> str:
    """The service a peer name stands for (``controller@h1`` -> ``controller``)."""
    return name.split("@", 1)[0]


class PeerDisconnect(Body):
    TYPE = "peer.disconnect"
    reason: str = ""


class Error(Body):
    TYPE = "error"
    code: ErrorCode
    reason: str
    details: dict[str, Any] = {}


class Ack(Body):
    """A plain acknowledgement for requests that need no other answer."""

    TYPE = "ack"
    detail: str = ""


#: messages one bus.bundle carries at most, and their encoded bytes at most
MAX_BUNDLE = 256
MAX_BUNDLE_BYTES = 1024 * 1024


class Bundle(Body):
    """Several messages from one peer to another, sent (and routed by the hub) as one.

    A peer bundles what it sends to the same peer in one turn of its loop, so a busy
    peer pays the per-message cost of the bus once per bundle. Each entry is an encoded
    message (its header frame and body frame); the receiver decodes each and handles it
    as if it had come alone, refusing any whose ``src`` is not the bundle's ``src`` (the
    name the hub verified) or whose ``dst`` is not itself.
    """

    TYPE = "bus.bundle"
    BINARY = ("messages",)
    messages: list[tuple[bytes, bytes]] = Field(min_length=1, max_length=MAX_BUNDLE)


class PeerInfo(Body):
    """One registry entry as the hub reports it."""

    name: str
    kind: PeerKind
    role: str = ""
    capabilities: list[str] = []
    capacity: int = 1
    state: PeerState = PeerState.IDLE
    load: int = 0
    running: list[str] = []
    pid: int = 0
    host: str = ""
    metrics_url: str = ""
    registered_at: float = 0.0
    last_seen_ago: float = 0.0
    key: str = ""  # the CurveZMQ key it registered with
    user: str = ""  # the user it says it runs as
    host_stats: dict[str, float] = {}  # a controller's host: see PeerHeartbeat
    auth: str = ""  # see PeerRegister.auth


class RegistryList(Body):
    TYPE = "registry.list"
    kind: PeerKind | None = None


class RegistryListReply(Body):
    TYPE = "registry.list_reply"
    hub_id: str
    hub_pid: int = 0
    peers: list[PeerInfo]
