"""SQLite's durability setting and its group commit.

By default every connection runs `synchronous=FULL` (a commit is fsynced); concurrent
writes share one transaction and one COMMIT; no write is handed back (no caller answered,
no waiter woken, nothing forwarded) before the COMMIT holding it has returned; one write's
own error fails that write alone, and a batch the database cannot take (disk full) fails
every write in it with StoreUnavailable and keeps none of them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from berth.adapters.sql import sqlite_commit
from berth.adapters.sql.sqlite import SqliteStore
from berth.bootstrap import _store
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.delivery import QueueLimit
from berth.domain.errors import Conflict, Overloaded, StoreUnavailable
from berth.ports import Settle
from berth.settings import Settings
from tests.contract.test_store import make_d


def _committed(path: Path, sql: str, *args: Any) -> list[Any]:
    """What an independent connection sees: committed rows only."""
    c = sqlite3.connect(str(path))
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


async def test_every_connection_is_synchronous_full_by_default(tmp_path: Path) -> None:
    store = _store(Settings(data_dir=str(tmp_path)))
    assert isinstance(store, SqliteStore)
    await store.migrate()
    try:
        await store.accept(make_d("w1", "m"))
        await store.pending("w1")
        conns = [store.writes._connection(), store._hot_conn, store._connect()]
        assert [c.execute("PRAGMA synchronous").fetchone()[0] for c in conns] == [2, 2, 2]
    finally:
        await store.close()


async def test_concurrent_writes_share_one_commit_and_answer_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(str(path))
    await store.migrate()
    events: list[str] = []
    real_commit = sqlite_commit.GroupCommit._commit

    def commit(c: sqlite3.Connection) -> None:
        real_commit(c)
        events.append("committed")

    monkeypatch.setattr(sqlite_commit.GroupCommit, "_commit", staticmethod(commit))

    async def accept(i: int) -> None:
        d, created = await store.accept(make_d("w1", f"m{i}"))
        assert created
        # answered only once its row is committed (visible to any other connection)
        assert _committed(path, "SELECT status FROM deliveries WHERE id = ?", d.id) == [("queued",)]
        events.append("answered")

    try:
        before = store.writes.batches
        await asyncio.gather(*(accept(i) for i in range(20)))
        assert store.writes.batches - before == 1  # twenty accepts, one transaction
        assert events[0] == "committed" and events.count("answered") == 20

        events.clear()
        got = await store.claim("w1", capacity=None, owner="me", lease_seconds=30, now=time.time())
        events.append("claimed")
        assert len(got) == 20 and events == ["committed", "claimed"]

        async def settle(d_id: str, how: Settle) -> None:
            settled = await store.settle(d_id, "me", how, time.time())
            assert settled is not None and settled.status is how.status
            events.append(f"settled {how.status.value}")

        events.clear()
        before = store.writes.batches
        hows = [Settle(D.DONE, reply=b"{}")] * 10 + [Settle(D.DEAD, reason="poison")] * 10
        await asyncio.gather(*(settle(d.id, how) for d, how in zip(got, hows, strict=True)))
        assert store.writes.batches - before == 1
        # a reply is answered once its settle ran (before the COMMIT); any other outcome after
        assert events == ["settled done"] * 10 + ["committed"] + ["settled dead"] * 10
        seen = _committed(path, "SELECT status, count(*) FROM deliveries GROUP BY status")
        assert sorted(seen) == [("dead", 10), ("done", 10)]
    finally:
        await store.close()


async def test_a_write_alone_is_committed_at_once_without_waiting_for_company(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "b.db"))
    await store.migrate()
    try:
        await store.accept(make_d("w1", "warm"))
        t0 = time.monotonic()
        for i in range(20):
            await store.accept(make_d("w1", f"m{i}"))
        # no batching window to sit out: twenty lone commits, each started on the next turn
        assert store.writes.batches >= 21
        assert time.monotonic() - t0 < 20 * 0.25
    finally:
        await store.close()


async def test_one_writes_error_fails_that_write_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(str(path))
    await store.migrate()

    def half_then_conflict(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM deliveries")  # rolled back with its savepoint
        raise Conflict("refused halfway")

    try:
        await store.accept(make_d("w1", "old"))
        results = await asyncio.gather(
            store.accept(make_d("w1", "a")),
            store.writes.write(half_then_conflict),
            store.accept(make_d("w1", "b")),
            return_exceptions=True,
        )
        assert isinstance(results[1], Conflict)
        assert store.writes.retried == 3  # the batch ran again, one savepoint per write
        assert [r[1] for r in (results[0], results[2])] == [True, True]  # type: ignore[index]
        seen = _committed(path, "SELECT message_id FROM deliveries ORDER BY seq")
        assert [m for (m,) in seen] == ["old", "a", "b"]
    finally:
        await store.close()


async def test_a_full_disk_fails_every_write_of_the_batch_and_keeps_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(str(path))
    await store.migrate()
    try:
        await store.accept(make_d("w1", "before"))
        c = store.writes._connection()
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: SQLITE_FULL
        big = b'{"jsonrpc": "2.0", "pad": "' + b"x" * 200_000 + b'"}'
        results = await asyncio.gather(
            store.accept(make_d("w1", "small")),
            store.accept(make_d("w1", "big", request=big)),
            store.accept(make_d("w1", "small2")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        seen = _committed(path, "SELECT message_id FROM deliveries")
        assert seen == [("before",)]  # nothing of the failed batch was kept
        c.execute("PRAGMA max_page_count = 1073741823")  # space is back
        d, created = await store.accept(make_d("w1", "big", request=big))
        assert created and d.request == big
    finally:
        await store.close()


def _held_commits(monkeypatch: pytest.MonkeyPatch, gate: threading.Event) -> list[str]:
    """Every COMMIT from now on waits for `gate` before it runs; returns what committed."""
    seen: list[str] = []
    real = sqlite_commit.GroupCommit._commit

    def commit(c: sqlite3.Connection) -> None:
        assert gate.wait(10)
        real(c)
        seen.append("committed")

    monkeypatch.setattr(sqlite_commit.GroupCommit, "_commit", staticmethod(commit))
    return seen


async def _flying(store: SqliteStore, *names: str) -> list[str]:
    ids = [(await store.accept(make_d("w1", n)))[0].id for n in names]
    got = await store.claim("w1", capacity=None, owner="me", lease_seconds=30, now=time.time())
    assert sorted(g.id for g in got) == sorted(ids)
    return ids


async def test_a_replied_settle_is_answered_before_its_commit_and_nothing_else_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(str(path))
    await store.migrate()
    gate = threading.Event()
    try:
        replied, failed = await _flying(store, "replied", "failed")
        committed = _held_commits(monkeypatch, gate)
        done = asyncio.ensure_future(
            store.settle(replied, "me", Settle(D.DONE, reply=b"{}"), time.time())
        )
        dead = asyncio.ensure_future(
            store.settle(failed, "me", Settle(D.DEAD, reason="unreached"), time.time())
        )
        accept = asyncio.ensure_future(store.accept(make_d("w1", "same batch")))
        settled = await asyncio.wait_for(done, 5)  # the COMMIT is still held
        assert settled is not None and settled.status is D.DONE and committed == []
        read = asyncio.ensure_future(store.get_delivery(replied))  # the caller reads it back
        await asyncio.sleep(0.2)
        assert not dead.done() and not accept.done()  # they wait for the COMMIT
        assert not read.done()  # and so does a read through the store: never in flight
        # and nothing of the batch is visible before it: the replied one is in flight on disk
        seen = _committed(path, "SELECT message_id, status FROM deliveries ORDER BY seq")
        assert seen == [("replied", "in_flight"), ("failed", "in_flight")]
        gate.set()
        await asyncio.wait_for(asyncio.gather(dead, accept), 5)
        assert (await asyncio.wait_for(read, 5)).status is D.DONE
        seen = _committed(path, "SELECT message_id, status FROM deliveries ORDER BY seq")
        assert seen == [("replied", "done"), ("failed", "dead"), ("same batch", "queued")]
    finally:
        gate.set()
        await store.close()


async def test_a_duplicate_over_the_queue_limit_is_not_answered_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery log answers a messageId sent again while the queue is over its limit
    from what the store has: never from an accept whose COMMIT (and fsync) has not
    returned, which a power cut would take back."""
    from berth.adapters.memory_bus import MemoryBus
    from berth.metrics import Metrics
    from berth.services.delivery_log import DeliveryLog
    from berth.services.events import Events

    store = SqliteStore(str(tmp_path / "b.db"))
    await store.migrate()
    bus = MemoryBus()
    log = DeliveryLog(store, bus, Events(bus, "t"), Metrics(), replica="a", sole=True)
    gate = threading.Event()
    try:
        await store.accept(make_d("w1", "warm"))
        _held_commits(monkeypatch, gate)
        first = asyncio.ensure_future(store.accept(make_d("w1", "m")))
        await asyncio.sleep(0.2)
        dup = asyncio.ensure_future(
            log.accept(make_d("w1", "m"), workspace_name="w1", limit=QueueLimit(depth=1))
        )
        await asyncio.sleep(0.3)
        assert not first.done()
        if dup.done():  # refused (429: try again later), never answered from the unsynced row
            assert isinstance(dup.exception(), Overloaded)
        gate.set()
        d, created = await asyncio.wait_for(first, 5)
        assert created
        (late,) = await asyncio.gather(dup, return_exceptions=True)
        assert isinstance(late, Overloaded) or (not late[1] and late[0].id == d.id)
        again, created_again = await log.accept(
            make_d("w1", "m"), workspace_name="w1", limit=QueueLimit(depth=1)
        )
        assert not created_again and again.id == d.id  # once committed, the retry is answered
    finally:
        gate.set()
        await store.close()
