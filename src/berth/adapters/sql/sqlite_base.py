"""The SQLite store's plumbing: connections, transactions, and what a driver error means.

Every operation runs as one transaction (a savepoint of a group commit for writes), so
each is atomic. WAL mode; `synchronous` is FULL by default: a write is fsynced before its
operation returns, so it survives an OS crash or a power cut (NORMAL: a crash of berth).

Three connections. Every write goes through the group commit's (sqlite_commit.py):
concurrent writes share one transaction and one fsync, and the message path's statements
run on the event loop, so only the fsync is a thread hop. Reads of the message path (one
delivery, queue depth) run on the loop's read connection, which sees committed writes
only. Other reads (listings, scans) run on a worker thread's connection, so the loop
never waits on a long statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from berth.adapters.sql import schema
from berth.adapters.sql.sqlite_commit import GroupCommit, away
from berth.domain.errors import StoreUnavailable

T = TypeVar("T")
__all__ = ["SqliteBase"]

BUSY_MS = 30_000  # the longest any operation waits for the database's locks
HOT_BUSY_MS = 20  # the event loop's: past it, the work moves to a thread


def _locked(e: StoreUnavailable) -> bool:
    cause = e.__cause__
    name = getattr(cause, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


class SqliteBase:
    def __init__(self, path: str, *, synchronous: str = "FULL", busy_ms: int = BUSY_MS) -> None:
        self.path = path
        self._busy_ms = busy_ms
        self._sync = synchronous.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        self._conn: sqlite3.Connection | None = None  # the worker thread's (reads)
        self._hot_conn: sqlite3.Connection | None = None  # the event loop's (reads)
        self.writes = GroupCommit(
            lambda: self._open(HOT_BUSY_MS),
            commit_in_thread=self._sync in ("FULL", "EXTRA"),
            busy_ms=busy_ms,
        )

    # plumbing --------------------------------------------------------------
    def _open(self, busy_ms: int | None = None) -> sqlite3.Connection:
        busy_ms = self._busy_ms if busy_ms is None else busy_ms
        try:
            c = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000
            )
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute(f"PRAGMA synchronous={self._sync}")
            c.execute(f"PRAGMA busy_timeout={busy_ms}")
        except sqlite3.Error as e:
            if away(e):
                raise StoreUnavailable(f"the SQLite database cannot be opened: {e}") from e
            raise
        return c

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    @staticmethod
    def _tx(c: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """`fn` as one transaction. The driver's operational errors (a database locked past
        the busy timeout, a full disk, an I/O error) are the store being unavailable: the
        transaction is rolled back, so nothing of it was written."""
        try:
            c.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as e:
            if away(e):
                raise StoreUnavailable(f"SQLite: {e}") from e
            raise
        try:
            out = fn(c)
            c.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if away(e):
                raise StoreUnavailable(f"SQLite: {e}") from e
            raise
        return out

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """An operation off the message path: a write in the next group commit (run in the
        committer thread), a read on the worker thread's connection."""
        if write:
            return await self.writes.write(fn, cold=True)
        await self.writes.committed()  # what a caller was handed early, read back
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._tx(self._connect(), fn, False)
        )

    async def _hot(
        self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True, early: bool = False
    ) -> T:
        """One short statement or two of a message's path: a write in the next group commit
        (its statements on the loop), a read on the loop's read connection.

        The read connection waits at most HOT_BUSY_MS for a lock; past it the read moves to
        the worker thread, so the event loop never stalls. `early`: see GroupCommit.write."""
        if write:
            return await self.writes.write(fn, early=early)
        await self.writes.committed()  # what a caller was handed early, read back
        if self._hot_conn is None:
            self._hot_conn = self._open(HOT_BUSY_MS)
        try:
            return self._tx(self._hot_conn, fn, False)
        except StoreUnavailable as e:
            if not _locked(e):
                raise
        return await self._run(fn, write=False)

    async def migrate(self) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in c.execute("SELECT version FROM schema_migrations")}
            for version, script in schema.migrations(schema.SQLITE):
                if version in done:
                    continue
                for stmt in schema.statements(script):
                    c.execute(stmt)
                c.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))

        await self._run(go)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone(), write=False)

    async def close(self) -> None:
        await self.writes.close()
        if self._hot_conn is not None:
            self._hot_conn.close()
            self._hot_conn = None

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
