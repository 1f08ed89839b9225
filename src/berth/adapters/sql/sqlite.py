"""The Store port on SQLite: the embedded default.

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
from typing import Any, TypeVar

from berth.adapters.sql import rows, schema
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus, sources
from berth.domain.errors import Conflict, NotFound, StoreUnavailable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace
from berth.ports import Settle

T = TypeVar("T")
D = DeliveryStatus
_EXPIRES_FROM = rows.single(sources(D.EXPIRED))  # through the index of queued rows
__all__ = ["SqliteStore"]


# Hot queries name their partial index (INDEXED BY): without ANALYZE statistics SQLite's
# planner prefers the full (workspace_id, seq) index, which walks every finished delivery
# of the workspace: 2.5 ms per claim with 4,000 of them, found with py-spy.
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


class SqliteStore(rows.WorkspaceUpdates):
    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._sync = synchronous.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        self._conn: sqlite3.Connection | None = None  # the worker thread's
        self._hot_conn: sqlite3.Connection | None = None  # the event loop's
        self._inline = self._sync != "FULL"

    # plumbing --------------------------------------------------------------
    def _open(self, busy_ms: int = BUSY_MS) -> sqlite3.Connection:
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

    # workspaces ------------------------------------------------------------
    async def create_workspace(self, ws: Workspace) -> None:
        p = rows.ws_params(ws)
        cols = ", ".join(p)
        sql = f"INSERT INTO workspaces ({cols}) VALUES ({', '.join(':' + k for k in p)})"

        def go(c: sqlite3.Connection) -> None:
            try:
                c.execute(sql, p)
            except sqlite3.IntegrityError:
                raise Conflict(f"a workspace named {ws.name!r} exists", code="name_taken") from None

        await self._run(go)

    async def get_workspace(self, ref: str) -> Workspace:
        def go(c: sqlite3.Connection) -> Workspace:
            row = c.execute(
                "SELECT * FROM workspaces WHERE id = ? OR name = ? LIMIT 1", (ref, ref)
            ).fetchone()
            if row is None:
                raise NotFound(f"no workspace {ref!r}", code="workspace_not_found")
            return rows.ws_from_row(row)

        return await self._run(go, write=False)

    async def list_workspaces(self) -> list[Workspace]:
        return await self._run(
            lambda c: [
                rows.ws_from_row(r)
                for r in c.execute("SELECT * FROM workspaces ORDER BY created_at")
            ],
            write=False,
        )

    async def _update_ws(
        self,
        ws_id: str,
        only_from: frozenset[WorkspaceState] | None,
        fields: dict[str, Any],
    ) -> Workspace | None:
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        params = {k: rows.ws_value(k, v) for k, v in fields.items()}
        params["_id"] = ws_id
        where = "id = :_id"
        if only_from is not None:
            where += f" AND state IN {rows.sql_set(only_from)}"

        def go(c: sqlite3.Connection) -> Workspace | None:
            row = c.execute(
                f"UPDATE workspaces SET {sets} WHERE {where} RETURNING *", params
            ).fetchone()
            return None if row is None else rows.ws_from_row(row)

        return await self._run(go)

    async def delete_workspace(self, ws_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM workspaces WHERE id = ?", (ws_id,)))

    async def workspace_by_token(self, token_hash: str) -> Workspace | None:
        def go(c: sqlite3.Connection) -> Workspace | None:
            row = c.execute(
                "SELECT * FROM workspaces WHERE token_hash = ? OR run_token_hash = ? LIMIT 1",
                (token_hash, token_hash),
            ).fetchone()
            return None if row is None else rows.ws_from_row(row)

        return await self._run(go, write=False)

    # deliveries ------------------------------------------------------------
    async def accept(self, d: Delivery) -> tuple[Delivery, bool]:
        p = rows.d_params(d)
        sql = (
            f"INSERT INTO deliveries ({', '.join(p)}) VALUES ({', '.join(':' + k for k in p)}) "
            "ON CONFLICT (workspace_id, message_id) DO NOTHING RETURNING *"
        )

        def go(c: sqlite3.Connection) -> tuple[Delivery, bool]:
            row = c.execute(sql, p).fetchone()
            if row is not None:
                return rows.d_from_row(row), True
            row = c.execute(
                "SELECT * FROM deliveries WHERE workspace_id = ? AND message_id = ?",
                (d.workspace_id, d.message_id),
            ).fetchone()
            return rows.d_from_row(row), False

        return await self._hot(go)

    async def get_delivery(self, delivery_id: str) -> Delivery:
        def go(c: sqlite3.Connection) -> Delivery:
            row = c.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
            return rows.d_from_row(row)

        return await self._hot(go, write=False)

    async def find_delivery(self, workspace_id: str, message_id: str) -> Delivery | None:
        def go(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                "SELECT * FROM deliveries WHERE workspace_id = ? AND message_id = ?",
                (workspace_id, message_id),
            ).fetchone()
            return None if row is None else rows.d_from_row(row)

        return await self._hot(go, write=False)

    async def claim(
        self,
        workspace_id: str,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]:
        def go(c: sqlite3.Connection) -> list[Delivery]:
            limit = -1
            if capacity is not None:
                busy = c.execute(
                    "SELECT count(*) FROM deliveries INDEXED BY deliveries_in_flight "
                    f"WHERE workspace_id = ? AND status = '{rows.IN_FLIGHT}'",
                    (workspace_id,),
                ).fetchone()[0]
                limit = capacity - busy
                if limit <= 0:
                    return []
            got = c.execute(
                f"UPDATE deliveries SET status = '{rows.IN_FLIGHT}', lease_owner = :owner, lease_until = :until, "
                "forwards = forwards + 1, first_forwarded_at = COALESCE(first_forwarded_at, :now), "
                "updated_at = :now WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_queued WHERE workspace_id = :ws "
                f"AND status = '{rows.QUEUED}' AND not_before <= :now ORDER BY seq LIMIT :limit) RETURNING *",
                {
                    "owner": owner,
                    "until": now + lease_seconds,
                    "now": now,
                    "ws": workspace_id,
                    "limit": limit,
                },
            ).fetchall()
            return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)

        return await self._hot(go)

    async def renew(self, owner: str, ids: list[str], lease_until: float) -> int:
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        return await self._hot(
            lambda c: (
                c.execute(
                    f"UPDATE deliveries SET lease_until = ? WHERE status = '{rows.IN_FLIGHT}' AND lease_owner = ? "
                    f"AND id IN ({marks})",
                    (lease_until, owner, *ids),
                ).rowcount
            )
        )

    async def settle(
        self, delivery_id: str, owner: str, how: Settle, now: float
    ) -> Delivery | None:
        sets = (
            "status = :status, attempts = attempts + :inc, reason = :reason, not_before = :nb, "
            "lease_owner = NULL, lease_until = NULL, updated_at = :now, finished_at = :fin"
        )
        if how.reply is not None:
            sets += ", reply = :reply, reply_status = :rs"
        params = {
            "status": how.status.value,
            "inc": int(how.count_attempt),
            "reason": how.reason,
            "nb": how.not_before,
            "now": now,
            "fin": now if how.status in FINAL else None,
            "reply": how.reply,
            "rs": how.reply_status,
            "id": delivery_id,
            "owner": owner,
        }

        def go(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                f"UPDATE deliveries SET {sets} WHERE id = :id AND status = '{rows.IN_FLIGHT}' "
                "AND lease_owner = :owner RETURNING *",
                params,
            ).fetchone()
            return None if row is None else rows.d_from_row(row)

        return await self._hot(go)

    async def requeue_in_flight(self, workspace_id: str | None = None) -> list[str]:
        where, args = ("AND workspace_id = ?", (workspace_id,)) if workspace_id else ("", ())
        return await self._run(
            lambda c: [
                r[0]
                for r in c.execute(
                    f"UPDATE deliveries INDEXED BY deliveries_lease SET status = '{rows.QUEUED}', lease_owner = NULL, "
                    f"lease_until = NULL WHERE status = '{rows.IN_FLIGHT}' {where} RETURNING id",
                    args,
                )
            ]
        )

    async def requeue_expired(self, now: float) -> list[Delivery]:
        return await self._run(
            lambda c: [
                rows.d_from_row(r)
                for r in c.execute(
                    f"UPDATE deliveries INDEXED BY deliveries_lease SET status = '{rows.QUEUED}', lease_owner = NULL, "
                    f"lease_until = NULL, reason = 'lease expired: redelivered' WHERE status = '{rows.IN_FLIGHT}' AND lease_until < ? "
                    "RETURNING *",
                    (now,),
                )
            ]
        )

    async def finish(
        self,
        delivery_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        def go(c: sqlite3.Connection) -> Delivery | None:
            row = c.execute(
                f"UPDATE deliveries SET status = ?, reason = ?, finished_at = ?, updated_at = ?, "
                f"lease_owner = NULL, lease_until = NULL "
                f"WHERE id = ? AND status IN {rows.sql_set(only_from)} RETURNING *",
                (to.value, reason, now, now, delivery_id),
            ).fetchone()
            return None if row is None else rows.d_from_row(row)

        return await self._run(go)

    async def finish_all(
        self,
        workspace_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> list[Delivery]:
        def go(c: sqlite3.Connection) -> list[Delivery]:
            got = c.execute(
                f"UPDATE deliveries SET status = ?, reason = ?, finished_at = ?, updated_at = ?, "
                f"lease_owner = NULL, lease_until = NULL "
                f"WHERE workspace_id = ? AND status IN {rows.sql_set(only_from)} RETURNING *",
                (to.value, reason, now, now, workspace_id),
            )
            return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)

        return await self._run(go)

    async def requeue(
        self,
        delivery_id: str,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        def go(c: sqlite3.Connection) -> Delivery | None:
            cur = c.execute(
                f"SELECT * FROM deliveries WHERE id = ? AND status IN {rows.sql_set(only_from)}",
                (delivery_id,),
            ).fetchone()
            if cur is None:
                return None
            # To the back of the queue: a new sequence number (seq is the rowid).
            c.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            d = rows.d_from_row(cur)
            d.status, d.attempts, d.reason, d.finished_at = D.QUEUED, 0, reason, None
            d.not_before, d.updated_at = 0.0, now
            p = rows.d_params(d)
            row = c.execute(
                f"INSERT INTO deliveries ({', '.join(p)}) VALUES "
                f"({', '.join(':' + k for k in p)}) RETURNING *",
                p,
            ).fetchone()
            return rows.d_from_row(row)

        return await self._run(go)

    async def expire_due(self, now: float) -> list[Delivery]:
        return await self._run(
            lambda c: [
                rows.d_from_row(r)
                for r in c.execute(
                    f"UPDATE deliveries INDEXED BY deliveries_queued SET status = '{rows.EXPIRED}', reason = 'ttl passed', "
                    "finished_at = ?, updated_at = ? "
                    f"WHERE status = '{_EXPIRES_FROM}' AND expires_at IS NOT NULL AND expires_at <= ? RETURNING *",
                    (now, now, now),
                )
            ]
        )

    async def list_deliveries(
        self,
        workspace_id: str,
        status: DeliveryStatus | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        where, args = "workspace_id = ?", [workspace_id]
        if status is not None:
            where += " AND status = ?"
            args.append(status.value)

        def go(c: sqlite3.Connection) -> list[Delivery]:
            got = c.execute(
                f"SELECT * FROM deliveries WHERE {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
            ).fetchall()
            return [rows.d_from_row(r) for r in reversed(got)]

        return await self._run(go, write=False)

    async def pending(self, workspace_id: str) -> tuple[int, int]:
        def go(c: sqlite3.Connection) -> tuple[int, int]:
            row = c.execute(
                "SELECT (SELECT count(*) FROM deliveries INDEXED BY deliveries_queued "
                f"WHERE workspace_id = ? AND status = '{rows.QUEUED}'), "
                "(SELECT count(*) FROM deliveries INDEXED BY deliveries_in_flight "
                f"WHERE workspace_id = ? AND status = '{rows.IN_FLIGHT}')",
                (workspace_id, workspace_id),
            ).fetchone()
            return int(row[0]), int(row[1])

        return await self._hot(go, write=False)

    async def prune_finished(self, before: float) -> int:
        """In batches of 1,000 rows, each its own short transaction, so the loop's hot path
        never waits long for the write lock however much there is to prune."""
        total = 0
        while True:
            n = await self._run(
                lambda c: (
                    c.execute(
                        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_finished "
                        f"WHERE status IN {rows.sql_set(FINAL)} AND finished_at < ? LIMIT 1000)",
                        (before,),
                    ).rowcount
                )
            )
            total += n
            if n < 1000:
                return total

    # restarts --------------------------------------------------------------
    async def save_restart(self, r: RestartRecord) -> None:
        p = rows.r_params(r)
        sql = (
            f"INSERT INTO restarts ({', '.join(p)}) VALUES ({', '.join(':' + k for k in p)}) "
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in p if k != 'id')}"
        )
        await self._run(lambda c: c.execute(sql, p))

    async def get_restart(self, workspace_id: str, restart_id: str) -> RestartRecord:
        def go(c: sqlite3.Connection) -> RestartRecord:
            row = c.execute(
                "SELECT * FROM restarts WHERE id = ? AND workspace_id = ?",
                (restart_id, workspace_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no restart {restart_id!r}", code="restart_not_found")
            return rows.r_from_row(row)

        return await self._run(go, write=False)

    async def list_restarts(self, workspace_id: str, limit: int = 50) -> list[RestartRecord]:
        return await self._run(
            lambda c: [
                rows.r_from_row(r)
                for r in c.execute(
                    "SELECT * FROM restarts WHERE workspace_id = ? ORDER BY created_at DESC LIMIT ?",
                    (workspace_id, limit),
                )
            ],
            write=False,
        )

    async def active_restart(self, workspace_id: str) -> RestartRecord | None:
        def go(c: sqlite3.Connection) -> RestartRecord | None:
            row = c.execute(
                f"SELECT * FROM restarts WHERE workspace_id = ? AND phase NOT IN {rows.RESTART_FINISHED} "
                "ORDER BY created_at DESC LIMIT 1",
                (workspace_id,),
            ).fetchone()
            return None if row is None else rows.r_from_row(row)

        return await self._run(go, write=False)
