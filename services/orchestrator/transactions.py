"""The orchestrator's transactions: each mutation one SQLite transaction, or, with group
commit on (the service turns it on), the mutations of one turn of the event loop in one
transaction committed at the end of the turn.

In a turn's group each outermost ``tx`` block is a savepoint (undone alone if it raises;
the blocks inside it join it); whatever must not happen before the writes are durable
(replies, events, enqueues) waits for ``commit`` (``after_commit``; the peer commits before
it sends anything); work asked for with ``at_turn_end`` runs once, just before the turn
commits, inside its transaction. What a class built on this caches from its reads is
dropped through ``on_turn_end`` and ``on_rollback``."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class PartialWrite(RuntimeError):
    """A transaction block went on after a block inside it failed (see ``Transactions.tx``)."""


class Transactions:
    """The transaction machinery over one SQLite connection (``Store`` builds on it)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._tx_depth = 0
        self._joined_failed = False  # a block joined into the open one raised
        self.group_commit = False  # see the module's docstring
        self._group_open = False
        self._after_commit: list[Callable[[], None]] = []
        self._before_commit: list[Callable[[], None]] = []
        #: called when writes are undone (what was cached from them is stale)
        self.on_rollback: list[Callable[[], None]] = []
        #: called as a turn's group ends, before its commit (what was kept for the turn)
        self.on_turn_end: list[Callable[[], None]] = []
        self._commit_failed: sqlite3.Error | None = None
        self.commits = 0  # transactions committed (how the tests see the grouping)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A transaction, undone whole if its block raises (with what it asked to run
        after the commit); in a turn's group, a savepoint of the group (undone alone,
        committed with the turn).

        A block inside another one joins it: it is undone with the enclosing block, which
        its exception passes through. So a handler that wraps its work in one block applies
        its message whole or not at all, at the cost of one savepoint. An enclosing block
        that catches a joined block's exception and goes on is undone all the same and
        raises ``PartialWrite``: what the failed block wrote cannot be undone alone."""
        depth = self._tx_depth
        if depth:
            self._tx_depth = depth + 1
            try:
                yield self.conn
            except BaseException:
                self._joined_failed = True
                raise
            finally:
                self._tx_depth = depth
            return
        if self.group_commit and not self._group_open:
            self._open_group()
        if self._group_open:
            begin, commit, rollback = "SAVEPOINT tx", "RELEASE tx", ("ROLLBACK TO tx",
                                                                     "RELEASE tx")
        else:
            begin, commit, rollback = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
        self.conn.execute(begin)
        self._tx_depth, self._joined_failed = 1, False
        waiting = len(self._after_commit)
        try:
            yield self.conn
            if self._joined_failed:
                raise PartialWrite("a block inside this transaction failed and its error was "
                                   "caught: the whole transaction is undone")
        except BaseException:
            del self._after_commit[waiting:]
            for statement in rollback:
                self.conn.execute(statement)
            self._rolled_back()
            raise
        finally:
            self._tx_depth = 0
        self.conn.execute(commit)
        if commit == "COMMIT":
            self.commits += 1
            durable, self._after_commit[waiting:] = self._after_commit[waiting:], []
            for fn in durable:
                fn()

    def _open_group(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to end the turn: every transaction commits at once
        self.conn.execute("BEGIN IMMEDIATE")
        self._group_open = True
        loop.call_soon(self._commit_turn)

    def _commit_turn(self) -> None:
        try:
            self.commit()
        except sqlite3.Error as exc:
            # rolled back; the next commit() (the peer's, before it sends what this turn
            # queued) raises it, so nothing reporting the lost writes goes out
            self._commit_failed = exc

    def commit(self) -> None:
        """Commit this turn's writes (if a group is open), then run what waited on them.
        Raises sqlite3.Error when the commit fails (or failed at the end of the turn
        since the last call): the turn's writes are rolled back and what waited on them
        is dropped."""
        failed, self._commit_failed = self._commit_failed, None
        if failed is not None:
            raise failed
        if not self._group_open:
            return
        if self._tx_depth:
            raise RuntimeError("a transaction block is open at the end of a turn: a block "
                               "must not span an await")
        while self._before_commit:  # (one may ask for another)
            self._before_commit.pop(0)()
        self._group_open = False
        for fn in self.on_turn_end:
            fn()
        waiting, self._after_commit = self._after_commit, []
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            self._rolled_back()
            raise
        self.commits += 1
        for fn in waiting:
            fn()

    def _rolled_back(self) -> None:
        for fn in self.on_rollback:
            fn()

    def at_turn_end(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` once at the end of this turn's group, before it commits (its writes
        commit with the turn's); asked for again in the same turn, it still runs once.
        False, and nothing is kept, when no group is open (the caller acts at once).
        ``fn`` must not raise: it runs inside ``commit``."""
        if not self._group_open:
            return False
        if fn not in self._before_commit:
            self._before_commit.append(fn)
        return True

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once what was written so far is durable (at once if it is)."""
        if self._group_open or self._tx_depth:
            self._after_commit.append(fn)
        else:
            fn()


class AfterCommit:
    """An event publisher whose events go out once the state they announce is durable."""

    def __init__(self, events: Any, store: Transactions):
        self.inner = events
        self.store = store

    def publish(self, topic: str, body: Any) -> None:
        self.store.after_commit(lambda: self.inner.publish(topic, body))
