"""The hub's peer table: who is connected, under which name and socket identity, and
when each was last heard from (monotonic clock)."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from protocols import ErrorCode, ProtocolError
from protocols.peer import PeerHeartbeat, PeerInfo, PeerKind, PeerRegister, PeerState


@dataclass
class PeerEntry:
    identity: bytes
    info: PeerRegister
    last_seen: float
    registered_at: float = field(default_factory=time.time)
    state: PeerState = PeerState.IDLE
    load: int = 0
    running: list[str] = field(default_factory=list)
    reclaim: str = field(default_factory=lambda: secrets.token_hex(16))
    key: str = ""  # the CurveZMQ key it registered with ("" without CurveZMQ)
    host_stats: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> PeerKind:
        return self.info.kind

    def to_info(self, now: float) -> PeerInfo:
        i = self.info
        return PeerInfo(
            name=i.name, kind=i.kind, role=i.role, capabilities=i.capabilities,
            capacity=i.capacity, state=self.state, load=self.load, running=self.running,
            pid=i.pid, host=i.host, metrics_url=i.metrics_url,
            registered_at=self.registered_at, last_seen_ago=round(now - self.last_seen, 3),
            key=self.key, user=i.user, host_stats=self.host_stats, auth=i.auth,
        )


class PeerTable:
    def __init__(self) -> None:
        self.by_name: dict[str, PeerEntry] = {}
        self.by_identity: dict[bytes, PeerEntry] = {}
        self._counts: dict[PeerKind, int] = dict.fromkeys(PeerKind, 0)  # kept, not counted

    def register(self, identity: bytes, info: PeerRegister, now: float,
                 key: str = "") -> tuple[PeerEntry, PeerEntry | None]:
        """Add a peer. Returns (entry, replaced) where ``replaced`` is the older entry of
        the same peer that reconnected on a new socket: it proves that with the reclaim key
        the hub gave it (and, under CurveZMQ, the same key), never with a pid or host it
        merely claims."""
        replaced = None
        old = self.by_name.get(info.name)
        if old is not None and old.identity != identity:
            if not (info.reclaim and hmac.compare_digest(info.reclaim, old.reclaim)
                    and key == old.key):
                raise ProtocolError(ErrorCode.NAME_TAKEN,
                                    f"name {info.name!r} is held by a live peer")
            replaced = self.remove(old.identity)
        existing = self.by_identity.get(identity)
        if existing is not None and existing.name != info.name:
            self.remove(identity)  # the same socket re-registering under a new name
        keep = existing if existing is not None and existing.name == info.name else replaced
        entry = PeerEntry(identity=identity, info=info, last_seen=now, key=key)
        if keep is not None:
            entry.reclaim = keep.reclaim
        self.by_name[info.name] = entry
        old_entry = self.by_identity.get(identity)
        if old_entry is not None:
            self._counts[old_entry.kind] -= 1
        self.by_identity[identity] = entry
        self._counts[entry.kind] += 1
        return entry, replaced

    def remove(self, identity: bytes) -> PeerEntry | None:
        entry = self.by_identity.pop(identity, None)
        if entry is not None:
            self._counts[entry.kind] -= 1
            if self.by_name.get(entry.name) is entry:
                del self.by_name[entry.name]
        return entry

    def heartbeat(self, entry: PeerEntry, hb: PeerHeartbeat, now: float) -> bool:
        """Record a heartbeat; True if the peer's state changed."""
        entry.last_seen = now
        changed = entry.state != hb.state
        entry.state, entry.load, entry.running = hb.state, hb.load, hb.running
        if hb.host_stats:
            entry.host_stats = hb.host_stats
        return changed

    def expired(self, now: float, budget: float) -> list[PeerEntry]:
        return [e for e in self.by_identity.values() if now - e.last_seen > budget]

    def count(self, kind: PeerKind) -> int:
        return self._counts[kind]
