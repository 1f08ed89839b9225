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
        self._db = sqlite3.connect(state_dir / "dedupe.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (message_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                         "body BLOB NOT NULL, at REAL NOT NULL)")
        self._lock = asyncio.Lock()
        self._running: dict[str, asyncio.Future[tuple[str, bytes] | None]] = {}

    def lookup(self, message_id: str) -> tuple[str, bytes] | None:
        row = self._db.execute("SELECT kind, body FROM results WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def running(self, message_id: str) -> asyncio.Future[tuple[str, bytes] | None] | None:
        return self._running.get(message_id)

    def begin(self, message_id: str) -> None:
        self._running[message_id] = asyncio.get_running_loop().create_future()

    async def finish(self, message_id: str, kind: str, body: bytes | None) -> None:
        """Store the outcome (None: nothing to remember, e.g. refused) and wake duplicates."""
        if body is not None:
            async with self._lock:
                await asyncio.to_thread(self._db.execute,
                                        "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                                        (message_id, kind, body, time.time()))
        fut = self._running.pop(message_id, None)
        if fut is not None and not fut.done():
            fut.set_result(None if body is None else (kind, body))

    def prune(self, older_than: float) -> None:
        self._db.execute("DELETE FROM results WHERE at < ?", (time.time() - older_than,))

    def close(self) -> None:
        self._db.close()
