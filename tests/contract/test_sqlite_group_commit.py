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
import time
from pathlib import Path
from typing import Any

import pytest

from berth.adapters.sql import sqlite_commit
from berth.adapters.sql.sqlite import SqliteStore
from berth.bootstrap import _store
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.errors import Conflict, StoreUnavailable
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

        async def settle(d_id: str) -> None:
            settled = await store.settle(d_id, "me", Settle(D.DONE, reply=b"{}"), time.time())
            assert settled is not None and settled.status is D.DONE
            seen = _committed(path, "SELECT status FROM deliveries WHERE id = ?", d_id)
            assert seen == [("done",)]  # a waiter woken now reads what is on disk
            events.append("settled")

        events.clear()
        before = store.writes.batches
        await asyncio.gather(*(settle(d.id) for d in got))
        assert store.writes.batches - before == 1
        assert events[0] == "committed" and events.count("settled") == 20
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
