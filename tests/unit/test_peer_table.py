"""The hub's peer table keeps its counts by kind as peers come, re-register, take a name
back and go (counted once per change, not by walking every peer)."""

from __future__ import annotations

import random

import pytest

from protocols import ProtocolError
from protocols.peer import PeerKind, PeerRegister
from services.hub.registry import PeerTable


def walked(table: PeerTable, kind: PeerKind) -> int:
    return sum(1 for e in table.by_identity.values() if e.kind == kind)


@pytest.mark.parametrize("seed", range(5))
def test_counts_match_the_table_through_any_sequence(seed):
    rng = random.Random(seed)
    table = PeerTable()
    for step in range(2000):
        identity = bytes([rng.randrange(40)])
        name = f"p{rng.randrange(30)}"
        kind = rng.choice(list(PeerKind))
        if rng.random() < 0.3:
            table.remove(identity)
        else:
            old = table.by_name.get(name)
            reclaim = old.reclaim if old is not None and rng.random() < 0.5 else ""
            key = old.key if old is not None else ""
            try:
                table.register(identity, PeerRegister(name=name, kind=kind, reclaim=reclaim),
                               float(step), key)
            except ProtocolError:
                pass  # the name is held by another live peer
        for k in PeerKind:
            assert table.count(k) == walked(table, k), (step, k)
