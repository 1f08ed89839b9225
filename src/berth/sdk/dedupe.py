"""Duplicate removal by messageId, and the record of executions, durable in BERTH_STATE_DIR.

It works at the JSON-RPC layer: the response to a send (or the final event of a stream) is
stored, keyed by messageId, and committed before it is returned. A redelivered message
gets the stored response (with the caller's JSON-RPC id) and does not run again; a
duplicate that arrives while the first still runs waits for it. The layer was chosen
because it covers both method vocabularies and Message- and Task-returning agents alike,
with no knowledge of the agent's events.

The execution record (messageId -> task id, ended or not) exists so that a task a stop cut
short is closed at the next start instead of staying `working`. It protects a task only
once that task is in the task store, so an execution's start is written lazily: kept in
memory and committed, batched with every other pending start, just before the task store
first saves a task (`flush`, wired as the store's `before_save`) or when the process stops.
An execution that ends before that (every Message-returning one) costs no write at all;
one whose start was written gets its end written at once. One commit per send remains: the
stored response.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from berth.sdk.private import private_dir, private_file

__all__ = ["Dedupe"]


class Dedupe:
    def __init__(self, state_dir: Path, *, shared: bool = False) -> None:
        private_dir(state_dir)
        self.shared = shared
        # timeout: a process still stopping on the same state dir holds the lock until it exits
        self._db = sqlite3.connect(
            private_file(state_dir / "dedupe.sqlite"),
            check_same_thread=False,
            isolation_level=None,
            timeout=30,
        )
        # Alone, one process owns this file: exclusive locking, set before the first WAL
        # access, keeps the WAL index in the process's memory (no -shm file) and the page
        # cache valid between transactions. Shared (a deploy runs two versions on one state
        # directory), the WAL index is in shared memory and each transaction locks.
        if not shared:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "body BLOB NOT NULL, at REAL NOT NULL)"
        )
        # Which task each message's execution runs as, and whether it ended: a row that never
        # ended is an execution a stop cut short (see executions.Counted).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS executions (message_id TEXT PRIMARY KEY, "
            "task_id TEXT NOT NULL, started REAL NOT NULL, ended REAL)"
        )
        self._running: dict[str, asyncio.Future[tuple[str, bytes] | None]] = {}
        # Executions the last stop cut (read once: no new ones appear while this process runs
        # alone). Shared, an unended row may be the other version's running execution: none
        # is taken as cut at start, and a redelivered message looks its own row up.
        self._cut: dict[str, str] = (
            {}
            if shared
            else {
                r[0]: r[1]
                for r in self._db.execute(
                    "SELECT message_id, task_id FROM executions WHERE ended IS NULL"
                    " ORDER BY started"
                )
            }
        )
        self._pending: dict[str, tuple[str, float]] = {}  # started, not yet written
        self._written: set[str] = set()  # started and written: their end is written at once
        self.closed = False

    def lookup(self, message_id: str) -> tuple[str, bytes] | None:
        row = self._db.execute(
            "SELECT kind, body FROM results WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def running(self, message_id: str) -> asyncio.Future[tuple[str, bytes] | None] | None:
        return self._running.get(message_id)

    def begin(self, message_id: str) -> None:
        self._running[message_id] = asyncio.get_running_loop().create_future()

    def finish(self, message_id: str, kind: str, body: bytes | None) -> None:
        """Store the outcome (None: nothing to remember, e.g. refused) and wake duplicates.

        Synchronous (a WAL commit without fsync, well under a millisecond) so that it also
        completes in the `finally` of a stream whose caller hung up."""
        if body is not None and not self.closed:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                (message_id, kind, body, time.time()),
            )
        fut = self._running.pop(message_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None if body is None else (kind, body))

    def cut_execution(self, message_id: str) -> str | None:
        """The task id of this message's earlier execution, if the last stop cut it."""
        if message_id in self._cut or not self.shared or self.closed:
            return self._cut.get(message_id)
        row = self._db.execute(
            "SELECT task_id FROM executions WHERE message_id = ? AND ended IS NULL", (message_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def cut_executions(self) -> list[tuple[str, str]]:
        """(messageId, task id) of every execution the last stop cut."""
        return list(self._cut.items())

    def started(self, message_id: str, task_id: str) -> None:
        if message_id in self._cut:
            # ran again after a cut: replace the old row now, or the next start would
            # close the old task again and lose its pointer to this one
            del self._cut[message_id]
            self._pending[message_id] = (task_id, time.time())
            self.flush()
            return
        self._pending[message_id] = (task_id, time.time())

    def flush(self) -> None:
        """Write the pending starts, in one transaction. Before a task is saved, and at a stop."""
        if not self._pending or self.closed:
            return
        rows = [(mid, tid, at) for mid, (tid, at) in self._pending.items()]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR REPLACE INTO executions VALUES (?, ?, ?, NULL)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._written.update(self._pending)
        self._pending.clear()

    def ended(self, message_id: str) -> None:
        if self._pending.pop(message_id, None) is not None:
            return  # never written: no task was saved meanwhile, nothing to close later
        if message_id in self._written:
            self._written.discard(message_id)
            if not self.closed:
                self._db.execute(
                    "UPDATE executions SET ended = ? WHERE message_id = ?",
                    (time.time(), message_id),
                )

    def prune(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        self._db.execute("DELETE FROM results WHERE at < ?", (cutoff,))
        self._db.execute("DELETE FROM executions WHERE started < ?", (cutoff,))

    def close(self) -> None:
        """Write what is pending and close. Later calls are no-ops, never errors: a stop
        closes the stores only after the executions it cut have done their bookkeeping,
        and anything that still comes after it must not raise."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self._db.close()
