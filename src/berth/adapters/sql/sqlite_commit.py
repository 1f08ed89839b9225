"""Group commit: every write of the SQLite store goes through one connection in batches
that share one transaction and one COMMIT (one fsync with synchronous=FULL).

A batch is everything submitted while the previous COMMIT was in flight; with nothing in
flight a write starts its batch on the loop's next turn, so no write waits for a timer.
Each write runs in its own savepoint: one that raises is rolled back alone and gets its
own error, the others commit. An error meaning the database cannot serve (disk full, I/O,
locked) rolls the whole batch back and fails each write in it with StoreUnavailable.
No write's result is handed back before the COMMIT holding it has returned.

Hot writes (a message's path, short statements) run on the event loop and only the
COMMIT goes to the committer thread when it fsyncs; a batch with a cold write (operator
actions, upkeep scans, prune batches) runs whole in that thread, and so does a batch whose
BEGIN finds the write lock held by another connection.

One kind of write is handed back before its COMMIT: one marked `early` (the settle of a
message the agent replied to), as soon as its statements have run on the loop, so its
caller has the agent's reply while the COMMIT and its fsync run. Losing that write to a
crash or a power cut leaves the delivery in flight on disk, redelivered and answered from
the SDK's record (docs/delivery-guarantee.md). Nothing else is: no reader sees a write
before its COMMIT has been fsynced (SQLite makes a WAL commit visible after its sync), and
a read made while such a batch is uncommitted waits for its COMMIT (`committed`), so a
caller handed an early write reads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from berth.domain.errors import StoreUnavailable

T = TypeVar("T")
__all__ = ["GroupCommit", "away"]

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


def away(e: BaseException) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return isinstance(e, sqlite3.Error) and name.startswith(_AWAY)


def _busy(e: BaseException) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


@dataclass(slots=True)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    fut: asyncio.Future[Any]
    cold: bool
    early: bool


Results = list[tuple[bool, Any]]  # per write: (ok, its value or its exception)


class GroupCommit:
    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        commit_in_thread: bool,
        busy_ms: int,
    ) -> None:
        self._connect = connect  # a connection whose busy timeout is short (the loop's wait)
        self._conn: sqlite3.Connection | None = None
        self._offload = commit_in_thread
        self._busy_ms = busy_ms
        # the committer thread: jobs through a SimpleQueue (C), results back with
        # call_soon_threadsafe; run_in_executor's concurrent.futures machinery (a work
        # item, a condition, a chained future per call) was ~7 % of the loop's CPU
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending: list[_Write] = []
        self._task: asyncio.Task[None] | None = None
        # set while a batch whose early writes were handed back is not yet committed: a
        # read waits for it (`committed`), so whoever got an early write reads it back
        self._uncommitted: asyncio.Future[None] | None = None
        # as PostgreSQL's group commit counts (benchmarks, tests): transactions committed,
        # the writes they carried, writes of batches run again one savepoint each
        self.batches = 0
        self.items = 0
        self.retried = 0

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], *, cold: bool = False, early: bool = False
    ) -> T:
        """`fn(connection)` inside the next batch; its value once that batch is committed
        (`early`: once its statements have run, when its batch runs on the loop)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(fn, fut, cold, early))
        if self._task is None:
            self._task = loop.create_task(self._drain(), name="sqlite-group-commit")
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                batch = [w for w in batch if not w.fut.done()]  # a caller gone: nothing written
                if batch:
                    await self._batch(batch)
        except BaseException as e:  # cancelled at shutdown: nobody may wait forever
            for w in self._pending:
                if not w.fut.done():
                    w.fut.set_exception(StoreUnavailable(f"SQLite: the store is closing ({e!r})"))
            self._pending = []
            raise
        finally:
            self._task = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    async def _batch(self, batch: list[_Write]) -> None:
        try:
            c = self._connection()
            if any(w.cold for w in batch) or not self._begin_now(c):
                results = await self._in_thread(self._whole, c, batch)
            else:
                results = self._apply(c, batch)
                if any(w.early for w in batch):
                    self._uncommitted = asyncio.get_running_loop().create_future()
                    self._hand(batch, results, early=True)
                if c.in_transaction:
                    if self._offload:
                        await self._in_thread(self._commit, c)
                    else:
                        self._commit(c)
        except BaseException as e:
            self._committed()
            for w in batch:
                if not w.fut.done():
                    w.fut.set_exception(_failed(e))
            if not isinstance(e, Exception):
                raise
            return
        self._committed()
        self.batches += 1
        self.items += sum(ok for ok, _ in results)
        self._hand(batch, results, early=False)

    def _committed(self) -> None:
        """The batch whose early writes were handed back is committed (or failed)."""
        if self._uncommitted is not None:
            if not self._uncommitted.done():
                self._uncommitted.set_result(None)
            self._uncommitted = None

    async def committed(self) -> None:
        """Once no batch whose early writes were handed back is left uncommitted (a read
        made now sees every write any caller has been handed)."""
        if self._uncommitted is not None:
            await asyncio.shield(self._uncommitted)

    @staticmethod
    def _hand(batch: list[_Write], results: Results, *, early: bool) -> None:
        """Each write's value or error to its caller (`early`: the early writes' only)."""
        for w, (ok, value) in zip(batch, results, strict=True):
            if w.fut.done() or (early and not w.early):
                continue
            if ok:
                w.fut.set_result(value)
            else:
                w.fut.set_exception(value)

    @staticmethod
    def _begin_now(c: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE on the loop, waiting at most the connection's short busy timeout;
        False when another connection holds the write lock (the batch goes to the thread)."""
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _busy(e):
                return False
            raise
        return True

    def _whole(self, c: sqlite3.Connection, batch: list[_Write]) -> Results:
        """A batch in the committer thread: waits up to busy_ms for the write lock."""
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                c.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() >= deadline:
                    raise
        results = self._apply(c, batch)
        if c.in_transaction:
            self._commit(c)
        return results

    def _apply(self, c: sqlite3.Connection, batch: list[_Write]) -> Results:
        """Every write of the batch in the open transaction. Optimistic: no savepoints, as
        the message path's writes do not fail short of the database failing; when one
        does raise, the whole transaction is rolled back and the batch run again with a
        savepoint per write (the writes are pure functions of the connection)."""
        out: Results = []
        try:
            for w in batch:
                out.append((True, w.fn(c)))
        except Exception as e:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            if away(e):
                raise
            c.execute("BEGIN IMMEDIATE")  # the write lock was just ours: no wait
            self.retried += len(batch)
            return self._one_by_one(c, batch)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _one_by_one(c: sqlite3.Connection, batch: list[_Write]) -> Results:
        """Each write in its own savepoint: one that raises is rolled back alone."""
        out: Results = []
        try:
            for w in batch:
                c.execute("SAVEPOINT w")
                try:
                    out.append((True, w.fn(c)))
                except Exception as e:
                    if away(e):
                        raise
                    c.execute("ROLLBACK TO w")
                    out.append((False, e))
                c.execute("RELEASE w")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _commit(c: sqlite3.Connection) -> None:
        try:
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)
        if self._conn is not None:
            await self._in_thread(self._conn.close)
            self._conn = None
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the committer thread (started on first use); its value or error."""
        if self._thread is None:
            self._thread = threading.Thread(target=_serve, args=(self._jobs,), name="berth-commit")
            self._thread.daemon = True
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, loop, fut))
        return await fut


_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """The committer thread: run each job, hand its outcome to the job's loop."""
    while (job := jobs.get()) is not None:
        _run(job)
        del job  # nothing of a batch outlives it while the thread waits


def _run(job: _Job) -> None:
    fn, args, loop, fut = job
    try:
        value, error = fn(*args), None
    except BaseException as e:  # handed to the awaiting coroutine
        value, error = None, e
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(_settle, fut, value, error)


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():  # its caller was cancelled: nobody reads it
        return
    if error is None:
        fut.set_result(value)
    else:
        fut.set_exception(error)


def _failed(e: BaseException) -> BaseException:
    """What a write of a failed batch raises: StoreUnavailable when the database cannot
    serve (or the store is shutting down mid-batch), else the error itself (a bug)."""
    if isinstance(e, Exception) and not away(e):
        return e
    out = StoreUnavailable(f"SQLite: {e}" if away(e) else "SQLite: the store is closing")
    out.__cause__ = e
    return out
