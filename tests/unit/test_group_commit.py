"""One transaction per turn of the loop (group commit), nothing sent before it commits,
and several messages to one peer in one turn travel as one bus.bundle."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from prometheus_client import CollectorRegistry

from libs.config import CommunicationConfig
from libs.peer import Peer
from protocols import decode
from protocols.codec import encode, make_header
from protocols.peer import Ack, Bundle, PeerKind
from services.orchestrator.store import Store
from services.orchestrator.transactions import PartialWrite

pytestmark = pytest.mark.timeout(30)


class FakePump:
    def __init__(self, on_send=None):
        self.sent: list[list[bytes]] = []
        self.on_send = on_send

    def send(self, frames: list[bytes]) -> None:
        if self.on_send:
            self.on_send(frames)
        self.sent.append(frames)


def grouped_store(tmp_path) -> Store:
    store = Store(str(tmp_path / "state.db"))
    store.group_commit = True
    return store


def outside(tmp_path) -> sqlite3.Connection:
    """Another connection: sees only what is committed."""
    return sqlite3.connect(str(tmp_path / "state.db"))


def sessions_seen(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]


def test_the_writes_of_one_turn_commit_together(tmp_path):
    store = grouped_store(tmp_path)
    other = outside(tmp_path)

    async def go():
        before = store.commits
        for i in range(3):
            store.create_session(f"s{i}", "RUN", "t", "/r", "", {}, [])
        assert store.conn.in_transaction and sessions_seen(other) == 0
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits
        assert not store.conn.in_transaction
        assert sessions_seen(other) == 3 and store.commits == before + 1

    asyncio.run(go())


def test_a_failing_block_is_undone_alone(tmp_path):
    store = grouped_store(tmp_path)

    async def go():
        store.create_session("kept", "RUN", "t", "/r", "", {}, [])
        with pytest.raises(RuntimeError):
            with store.tx():
                store.create_session("undone", "RUN", "t", "/r", "", {}, [])
                raise RuntimeError("half done")
        store.create_session("after", "RUN", "t", "/r", "", {}, [])
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits

    asyncio.run(go())
    ids = {r[0] for r in outside(tmp_path).execute("SELECT id FROM sessions")}
    assert ids == {"kept", "after"}


def test_after_commit_waits_for_the_commit_and_runs_at_once_without_a_group(tmp_path):
    store = grouped_store(tmp_path)
    other = outside(tmp_path)
    seen: list[int] = []

    async def go():
        store.create_session("s1", "RUN", "t", "/r", "", {}, [])
        store.after_commit(lambda: seen.append(sessions_seen(other)))
        assert seen == []
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits
        assert seen == [1]
        store.after_commit(lambda: seen.append(-1))  # nothing open: at once
        assert seen == [1, -1]

    asyncio.run(go())


def test_without_a_loop_every_transaction_commits_at_once(tmp_path):
    store = grouped_store(tmp_path)
    store.create_session("s1", "RUN", "t", "/r", "", {}, [])
    assert not store.conn.in_transaction and sessions_seen(outside(tmp_path)) == 1


def test_a_turn_reads_a_session_once_and_sees_its_own_writes(tmp_path):
    store = grouped_store(tmp_path)
    store.create_session("s1", "RUN", "t", "/r", "", {}, [])
    reads: list[str] = []
    store.conn.set_trace_callback(lambda sql: reads.append(sql) if sql.startswith(
        "SELECT * FROM sessions") else None)

    async def go():
        first = store.session("s1")
        assert store.session("s1") is first and len(reads) == 1  # kept for the turn
        store.update_session("s1", cost_usd=2.5)
        assert store.session("s1")["cost_usd"] == 2.5  # a write drops the kept row
        store.set_session_state("s1", "succeeded")
        assert store.session("s1")["state"] == "succeeded"
        with pytest.raises(RuntimeError):
            with store.tx():
                store.update_session("s1", cost_usd=9.0)
                assert store.session("s1")["cost_usd"] == 9.0
                raise RuntimeError("undone")
        assert store.session("s1")["cost_usd"] == 2.5  # the undone write is not seen
        store.delete_sessions(["s1"])
        assert store.session("s1") is None
        store.session("ghost")
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits and forgets
        n = len(reads)
        store.session("ghost")
        store.session("ghost")
        assert len(reads) == n + 1  # read again in a new turn, then kept for it
        await asyncio.sleep(0)  # wait-ok: a turn that only read forgets too
        store.session("ghost")
        assert len(reads) == n + 2

    asyncio.run(go())
    assert sessions_seen(outside(tmp_path)) == 0
    store.session("s1")
    store.session("s1")
    assert reads[-2:] == ["SELECT * FROM sessions WHERE id='s1'"] * 2  # no loop: none kept


def make_peer(name: str) -> Peer:
    return Peer(name=name, kind=PeerKind.SERVICE, comm=CommunicationConfig(),
                registry=CollectorRegistry())


def test_nothing_leaves_before_the_writes_it_reports_are_committed(tmp_path):
    store = grouped_store(tmp_path)
    other = outside(tmp_path)
    committed_when_sent: list[int] = []

    async def go():
        peer = make_peer("orchestrator")
        peer._pump = FakePump(lambda frames: committed_when_sent.append(sessions_seen(other)))
        peer.before_flush.append(store.commit)
        peer.send("agent-1", Ack(detail="first, before any write"))
        store.create_session("s1", "RUN", "t", "/r", "", {}, [])
        peer.send("agent-1", Ack(detail="after the write"))
        await asyncio.sleep(0)  # wait-ok: the end of this turn sends
        await asyncio.sleep(0)  # wait-ok: and commits

    asyncio.run(go())
    assert committed_when_sent == [1]  # one bundle, sent after the commit


def test_a_failed_commit_withholds_what_reported_the_lost_writes(tmp_path):
    store = grouped_store(tmp_path)
    published: list[str] = []

    async def go():
        peer = make_peer("orchestrator")
        peer._pump = FakePump()
        peer.before_flush.append(store.commit)
        store.create_session("s1", "RUN", "t", "/r", "", {}, [])
        store.after_commit(lambda: published.append("event"))
        # the commit at the end of this turn fails (here: a constraint checked at commit)
        store.conn.execute("PRAGMA defer_foreign_keys=ON")  # checked at COMMIT
        store.add_tasks("nowhere", [{"id": "t1", "session_id": "nowhere", "title": "",
                                     "prompt": "", "role": "worker", "cwd": "",
                                     "timeout_s": 1.0}])
        store._commit_turn()  # what the loop would run first
        peer.send("agent-1", Ack(detail="reports the lost write"))
        await asyncio.sleep(0)  # wait-ok: the end of this turn sends
        assert peer._pump.sent == [] and published == []
        assert peer.metrics.withheld._value.get() == 1
        peer.send("agent-1", Ack(detail="a later turn"))  # the failure is reported once
        await asyncio.sleep(0)  # wait-ok: the end of this turn sends
        assert len(peer._pump.sent) == 1

    asyncio.run(go())
    assert sessions_seen(outside(tmp_path)) == 0


def test_messages_to_one_peer_in_one_turn_go_as_one_bundle_and_arrive_each():
    received: list[str] = []

    async def go():
        sender, receiver = make_peer("orchestrator"), make_peer("agent-1")
        sender._pump = FakePump()
        receiver._pump = FakePump()

        async def handler(msg):
            received.append(msg.body.detail)
        receiver.on(Ack.TYPE, handler)
        for i in range(3):
            sender.send("agent-1", Ack(detail=f"m{i}"))
        sender.send("agent-2", Ack(detail="alone"))
        await asyncio.sleep(0)  # wait-ok: the end of this turn sends
        bundles = [decode(f) for f in sender._pump.sent]
        assert [m.header.type for m in bundles] == ["bus.bundle", "ack"]
        assert bundles[0].header.dst == "agent-1" and len(bundles[0].body.messages) == 3
        receiver._on_frames(sender._pump.sent[0])
        # a bundle may not carry another sender's message
        forged = encode(make_header(Ack.TYPE, "distributor", "agent-1"), Ack(detail="forged"))
        bad = encode(make_header(Bundle.TYPE, "orchestrator", "agent-1"),
                     Bundle(messages=[(forged[0], forged[1])]))
        receiver._on_frames(bad)
        await asyncio.sleep(0)  # wait-ok: the handlers run
        await asyncio.gather(*list(receiver._tasks))
        errors = receiver.metrics.protocol_errors.labels("spoofed_source", "in")._value.get()
        assert errors == 1

    asyncio.run(go())
    assert received == ["m0", "m1", "m2"]


def test_a_block_inside_another_joins_it_and_a_caught_failure_undoes_both(tmp_path):
    store = grouped_store(tmp_path)
    statements: list[str] = []

    async def go():
        store.conn.set_trace_callback(statements.append)
        with store.tx():
            store.create_session("whole", "RUN", "t", "/r", "", {}, [])  # a block inside
        assert not any(s.startswith("SAVEPOINT") and s != "SAVEPOINT tx" for s in statements)
        assert statements.count("SAVEPOINT tx") == 1  # the inner block took none of its own
        with pytest.raises(PartialWrite):
            with store.tx():
                store.create_session("undone", "RUN", "t", "/r", "", {}, [])
                try:
                    with store.tx():
                        store.update_session("undone", cost_usd=1.0)
                        raise RuntimeError("half done")
                except RuntimeError:
                    pass  # caught, and the outer block went on
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits

    asyncio.run(go())
    ids = {r[0] for r in outside(tmp_path).execute("SELECT id FROM sessions")}
    assert ids == {"whole"}


def test_a_block_open_at_the_end_of_a_turn_is_an_error_not_a_commit(tmp_path):
    store = grouped_store(tmp_path)

    async def go():
        with store.tx():
            store.create_session("s1", "RUN", "t", "/r", "", {}, [])
            with pytest.raises(RuntimeError, match="must not span an await"):
                store.commit()  # what the end of the turn would run, had the block awaited
        store.commit()

    asyncio.run(go())
    assert sessions_seen(outside(tmp_path)) == 1


def test_what_the_commit_sends_goes_out_with_the_turn_not_a_turn_later(tmp_path):
    store = grouped_store(tmp_path)
    other = outside(tmp_path)

    async def go():
        peer = make_peer("orchestrator")
        peer._pump = FakePump()
        peer.before_flush.append(store.commit)
        peer.send("agent-1", Ack(detail="a reply"))  # (the flush comes first in the turn)
        store.create_session("s1", "RUN", "t", "/r", "", {}, [])
        # told only once durable: sent from inside the commit the flush runs first
        store.after_commit(lambda: peer.send("agent-1", Ack(detail="sent by the commit")))
        await asyncio.sleep(0)  # wait-ok: the end of this turn commits and sends
        assert sessions_seen(other) == 1
        [bundle] = [decode(f) for f in peer._pump.sent]  # both, in one bundle
        assert bundle.header.type == "bus.bundle" and len(bundle.body.messages) == 2

    asyncio.run(go())
