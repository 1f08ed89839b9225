"""The SQLite store's plumbing: connections, transactions, and what a driver error means.

Every operation runs as one transaction, so each is atomic. WAL mode; `synchronous` is
NORMAL by default (a commit survives a crash of berth, not a power cut) or FULL.

Two connections. The hot path of a message (accept, claim, settle, reads of one delivery,
queue depth) runs on the event loop's own connection: with NORMAL a commit is a write to
the WAL, tens of microseconds, and the hop to a thread cost more than the work (about
2 ms per message in thread hand-offs and GIL waits, measured). Everything else (operator
actions, upkeep scans, pruning in bounded batches, restart records) runs on a second
connection owned by one worker thread, so the loop never waits on a long statement. With
FULL (an fsync per commit) everything goes to the thread.
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
from berth.domain.errors import StoreUnavailable

T = TypeVar("T")
__all__ = ["SqliteBase"]

BUSY_MS = 30_000  # the worker thread's wait for the write lock
HOT_BUSY_MS = 20  # the event loop's: past it, the work moves to the thread


# The driver errors that mean "the database cannot serve now" (retry later), as opposed to
# a bug in berth's SQL: locked past the busy timeout, disk full, I/O, cannot open.
_AWAY = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
)


def _away(e: sqlite3.Error) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith(_AWAY)


def _locked(e: StoreUnavailable) -> bool:
    cause = e.__cause__
    name = getattr(cause, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


class SqliteBase:
    def __init__(self, path: str, *, synchronous: str = "NORMAL", busy_ms: int = BUSY_MS) -> None:
        self.path = path
        self._busy_ms = busy_ms
        self._sync = synchronous.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        self._conn: sqlite3.Connection | None = None  # the worker thread's
        self._hot_conn: sqlite3.Connection | None = None  # the event loop's
        self._inline = self._sync != "FULL"

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
            if _away(e):
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
            if _away(e):
                raise StoreUnavailable(f"SQLite: {e}") from e
            raise
        try:
            out = fn(c)
            c.execute("COMMIT")
        except BaseException as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error) and _away(e):
                raise StoreUnavailable(f"SQLite: {e}") from e
            raise
        return out

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._tx(self._connect(), fn, write)
        )

    async def _hot(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """One short statement or two of a message's path, on the loop's connection.

        The loop's connection waits at most HOT_BUSY_MS for the write lock; when the worker
        thread holds it longer (a prune batch, an operator's action), the work moves to the
        thread instead, so the event loop never stalls behind a long transaction."""
        if not self._inline:
            return await self._run(fn, write=write)
        if self._hot_conn is None:
            self._hot_conn = self._open(HOT_BUSY_MS)
        try:
            return self._tx(self._hot_conn, fn, write)
        except StoreUnavailable as e:
            if not _locked(e):
                raise
        return await self._run(fn, write=write)

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
        if self._hot_conn is not None:
            self._hot_conn.close()
            self._hot_conn = None

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, shut)
        self._pool.shutdown(wait=True)
