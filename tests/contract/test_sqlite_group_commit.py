"""SQLite's durability setting and its group commit.

By default every commit is fsynced: the read connections run `synchronous=FULL`, and the
group commit's connection runs NORMAL with berth making FULL's fsync of the write-ahead
log itself after each COMMIT. Concurrent writes share one transaction, one COMMIT and one
fsync; no write is handed back (no caller answered, no waiter woken, nothing forwarded)
before the COMMIT holding it has returned and been fsynced, except a settle, which is
handed back once committed while its fsync runs (the next batch waits for that fsync).
One write's own error fails that write alone, and a batch the database cannot take (disk
full, a failed fsync) fails every write waiting on it with StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import errno
import os
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


async def test_every_commit_is_fsynced_by_default(tmp_path: Path) -> None:
    store = _store(Settings(data_dir=str(tmp_path)))
    assert isinstance(store, SqliteStore)
    await store.migrate()
    try:
        await store.accept(make_d("w1", "m"))
        await store.pending("w1")
        conns = [store.writes._connection(), store._hot_conn, store._connect()]
        # the writer commits without syncing (NORMAL) because berth fsyncs after its COMMIT
        assert [c.execute("PRAGMA synchronous").fetchone()[0] for c in conns] == [1, 2, 2]
        assert store.writes._sync == store._fsync_wal
    finally:
        await store.close()


async def test_synchronous_normal_when_asked_makes_no_fsync_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsyncs(monkeypatch)
    store = SqliteStore(str(tmp_path / "b.db"), synchronous="NORMAL")
    await store.migrate()
    try:
        await store.accept(make_d("w1", "m"))
        assert store.writes._sync is None and synced == []
        assert store.writes._connection().execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        await store.close()


def _fsyncs(monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None) -> list[str]:
    """Record the path of every fsync (after it returns); with `gate`, each waits for it."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        if gate is not None:
            assert gate.wait(10)
        real(fd)
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


async def test_an_accept_is_answered_only_after_the_fsync_that_follows_its_commit(
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
    synced = _fsyncs(monkeypatch)
    try:
        await store.accept(make_d("w1", "warm"))  # the WAL file and its directory, seen once
        events.clear()
        synced.clear()

        async def accept(i: int) -> None:
            await store.accept(make_d("w1", f"m{i}"))
            events.append(f"answered after {len(synced)} fsyncs")

        await asyncio.gather(*(accept(i) for i in range(5)))
        assert events == ["committed"] + ["answered after 1 fsyncs"] * 5
        assert synced == [str(path) + "-wal"]
    finally:
        await store.close()


async def test_a_settle_is_answered_while_its_fsync_runs_but_nothing_else_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(str(path))
    await store.migrate()
    gate = threading.Event()
    try:
        d, _ = await store.accept(make_d("w1", "flying"))
        got = await store.claim("w1", capacity=None, owner="me", lease_seconds=30, now=time.time())
        assert [g.id for g in got] == [d.id]
        synced = _fsyncs(monkeypatch, gate)  # every fsync now waits for the gate
        settle = asyncio.ensure_future(
            store.settle(d.id, "me", Settle(D.DONE, reply=b"{}"), time.time())
        )
        accept = asyncio.ensure_future(store.accept(make_d("w1", "same batch")))
        settled = await asyncio.wait_for(settle, 5)  # answered with the fsync still held
        assert settled is not None and settled.status is D.DONE
        assert _committed(path, "SELECT status FROM deliveries WHERE id = ?", d.id) == [("done",)]
        later = asyncio.ensure_future(store.accept(make_d("w1", "next batch")))
        await asyncio.sleep(0.2)
        assert not accept.done() and not later.done() and synced == []
        # the next batch has not started: its message is not even committed
        seen = _committed(path, "SELECT message_id FROM deliveries ORDER BY seq")
        assert [m for (m,) in seen] == ["flying", "same batch"]
        gate.set()
        await asyncio.wait_for(asyncio.gather(accept, later), 5)
        assert synced[0] == str(path) + "-wal"
    finally:
        gate.set()
        await store.close()


async def test_a_failed_fsync_fails_the_writes_waiting_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(str(tmp_path / "b.db"))
    await store.migrate()
    try:
        d, _ = await store.accept(make_d("w1", "flying"))
        await store.claim("w1", capacity=None, owner="me", lease_seconds=30, now=time.time())
        real = os.fsync

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken)
        results = await asyncio.gather(
            store.settle(d.id, "me", Settle(D.DONE, reply=b"{}"), time.time()),
            store.accept(make_d("w1", "unsynced")),
            return_exceptions=True,
        )
        settled, failed = results
        assert not isinstance(settled, BaseException) and settled is not None  # before the fsync
        assert isinstance(failed, StoreUnavailable) and "fsync" in str(failed)
        monkeypatch.setattr(os, "fsync", real)
        # the store serves again once the disk does; the accept a caller may retry is kept
        again, created = await store.accept(make_d("w1", "unsynced"))
        assert not created and again.message_id == "unsynced"
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
