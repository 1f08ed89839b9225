"""Duplicate removal by messageId, durable in BERTH_STATE_DIR.

It works at the JSON-RPC layer: the response to a send (or the final event of a stream) is
stored, keyed by messageId, and committed before it is returned. A redelivered message
gets the stored response (with the caller's JSON-RPC id) and does not run again; a
duplicate that arrives while the first still runs waits for it. The layer was chosen
because it covers both method vocabularies and Message- and Task-returning agents alike,
with no knowledge of the agent's events.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

__all__ = ["Dedupe"]


class Dedupe:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            state_dir / "dedupe.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "body BLOB NOT NULL, at REAL NOT NULL)"
        )
        # Which task each message's execution runs as, and whether it ended: a row that never
        # ended is an execution a stop cut short (see server._Counted).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS executions (message_id TEXT PRIMARY KEY, "
            "task_id TEXT NOT NULL, started REAL NOT NULL, ended REAL)"
        )
        self._running: dict[str, asyncio.Future[tuple[str, bytes] | None]] = {}

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
        if body is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                (message_id, kind, body, time.time()),
            )
        fut = self._running.pop(message_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None if body is None else (kind, body))

    def cut_execution(self, message_id: str) -> str | None:
        """The task id of this message's earlier execution, if it started and never ended."""
        row = self._db.execute(
            "SELECT task_id FROM executions WHERE message_id = ? AND ended IS NULL", (message_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def cut_executions(self) -> list[tuple[str, str]]:
        """(messageId, task id) of every execution that started and never ended."""
        return [
            (r[0], r[1])
            for r in self._db.execute(
                "SELECT message_id, task_id FROM executions WHERE ended IS NULL ORDER BY started"
            )
        ]

    def started(self, message_id: str, task_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO executions VALUES (?, ?, ?, NULL)",
            (message_id, task_id, time.time()),
        )

    def ended(self, message_id: str) -> None:
        self._db.execute(
            "UPDATE executions SET ended = ? WHERE message_id = ?", (time.time(), message_id)
        )

    def prune(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        self._db.execute("DELETE FROM results WHERE at < ?", (cutoff,))
        self._db.execute("DELETE FROM executions WHERE started < ?", (cutoff,))

    def close(self) -> None:
        self._db.close()
