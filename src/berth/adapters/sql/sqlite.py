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
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from berth.adapters.sql import rows, schema
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus, check_move
from berth.domain.errors import Conflict, NotFound
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace
from berth.ports import Settle

T = TypeVar("T")
D = DeliveryStatus
_FINAL_SQL = "('done', 'dead', 'canceled', 'expired')"
__all__ = ["SqliteStore"]


# Hot queries name their partial index (INDEXED BY): without ANALYZE statistics SQLite's
# planner prefers the full (workspace_id, seq) index, which walks every finished delivery
# of the workspace: 2.5 ms per claim with 4,000 of them, found with py-spy.
class SqliteStore(rows.WorkspaceUpdates):
    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._sync = synchronous.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-sqlite")
        self._conn: sqlite3.Connection | None = None  # the worker thread's
        self._hot_conn: sqlite3.Connection | None = None  # the event loop's
        self._inline = self._sync != "FULL"

    # plumbing --------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self._sync}")
        c.execute("PRAGMA busy_timeout=30000")
        return c

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    @staticmethod
    def _tx(c: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        c.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            out = fn(c)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
        return out

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._tx(self._connect(), fn, write)
        )

    async def _hot(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """One short statement or two of a message's path, on the loop's connection."""
        if not self._inline:
            return await self._run(fn, write=write)
        if self._hot_conn is None:
            self._hot_conn = self._open()
        return self._tx(self._hot_conn, fn, write)

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
        fields = rows.ws_update(fields)
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        params = {k: rows.ws_value(k, v) for k, v in fields.items()}
        params["_id"] = ws_id
        where = "id = :_id"
        if only_from is not None:
            names = [s.value for s in only_from]
            where += f" AND state IN ({', '.join(repr(n) for n in names)})" if names else " AND 0"

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
                    "WHERE workspace_id = ? AND status = 'in_flight'",
                    (workspace_id,),
                ).fetchone()[0]
                limit = capacity - busy
                if limit <= 0:
                    return []
            got = c.execute(
                "UPDATE deliveries SET status = 'in_flight', lease_owner = :owner, lease_until = :until, "
                "forwards = forwards + 1, first_forwarded_at = COALESCE(first_forwarded_at, :now), "
                "updated_at = :now WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_queued WHERE workspace_id = :ws "
                "AND status = 'queued' AND not_before <= :now ORDER BY seq LIMIT :limit) RETURNING *",
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
                    f"UPDATE deliveries SET lease_until = ? WHERE status = 'in_flight' AND lease_owner = ? "
                    f"AND id IN ({marks})",
                    (lease_until, owner, *ids),
                ).rowcount
            )
        )

    async def settle(
        self, delivery_id: str, owner: str, how: Settle, now: float
    ) -> Delivery | None:
        check_move(D.IN_FLIGHT, how.status)
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
                f"UPDATE deliveries SET {sets} WHERE id = :id AND status = 'in_flight' "
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
                    "UPDATE deliveries INDEXED BY deliveries_lease SET status = 'queued', lease_owner = NULL, "
                    f"lease_until = NULL WHERE status = 'in_flight' {where} RETURNING id",
                    args,
                )
            ]
        )

    async def requeue_expired(self, now: float) -> list[Delivery]:
        return await self._run(
            lambda c: [
                rows.d_from_row(r)
                for r in c.execute(
                    "UPDATE deliveries INDEXED BY deliveries_lease SET status = 'queued', lease_owner = NULL, "
                    "lease_until = NULL, reason = 'lease expired: redelivered' WHERE status = 'in_flight' AND lease_until < ? "
                    "RETURNING *",
                    (now,),
                )
            ]
        )

    async def cancel(self, delivery_id: str, now: float, reason: str) -> Delivery:
        def go(c: sqlite3.Connection) -> Delivery:
            row = c.execute(
                "UPDATE deliveries SET status = 'canceled', reason = ?, finished_at = ?, "
                "updated_at = ? WHERE id = ? AND status = 'queued' RETURNING *",
                (reason, now, now, delivery_id),
            ).fetchone()
            if row is not None:
                return rows.d_from_row(row)
            cur = c.execute("SELECT status FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if cur is None:
                raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
            raise Conflict(
                f"only a queued delivery can be canceled; this one is {cur[0]}",
                code="not_cancelable",
            )

        return await self._run(go)

    async def cancel_pending(self, workspace_id: str, now: float, reason: str) -> list[Delivery]:
        return await self._run(
            lambda c: sorted(
                (
                    rows.d_from_row(r)
                    for r in c.execute(
                        "UPDATE deliveries SET status = 'canceled', reason = ?, finished_at = ?, updated_at = ?, "
                        "lease_owner = NULL, lease_until = NULL WHERE workspace_id = ? AND status IN ('queued', 'in_flight') "
                        "RETURNING *",
                        (reason, now, now, workspace_id),
                    )
                ),
                key=lambda d: d.seq,
            )
        )

    async def retry(self, delivery_id: str, now: float) -> Delivery:
        def go(c: sqlite3.Connection) -> Delivery:
            cur = c.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if cur is None:
                raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
            if cur["status"] not in ("dead", "canceled", "expired"):
                raise Conflict(
                    "only a dead, canceled or expired delivery can be retried; this one is "
                    f"{cur['status']}",
                    code="not_retryable",
                )
            # A retried delivery goes to the back of the queue: it takes a new sequence number.
            c.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
            d = rows.d_from_row(cur)
            d.status, d.attempts, d.reason, d.finished_at = (
                D.QUEUED,
                0,
                "retried by an operator",
                None,
            )
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
                    "UPDATE deliveries INDEXED BY deliveries_queued SET status = 'expired', reason = 'ttl passed', "
                    "finished_at = ?, updated_at = ? "
                    "WHERE status = 'queued' AND expires_at IS NOT NULL AND expires_at <= ? RETURNING *",
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
                "WHERE workspace_id = ? AND status = 'queued'), "
                "(SELECT count(*) FROM deliveries INDEXED BY deliveries_in_flight "
                "WHERE workspace_id = ? AND status = 'in_flight')",
                (workspace_id, workspace_id),
            ).fetchone()
            return int(row[0]), int(row[1])

        return await self._hot(go, write=False)

    async def counts(self, workspace_id: str | None = None) -> dict[DeliveryStatus, int]:
        where, args = ("WHERE workspace_id = ?", (workspace_id,)) if workspace_id else ("", ())

        def go(c: sqlite3.Connection) -> dict[DeliveryStatus, int]:
            out = {s: 0 for s in D}
            for st, n in c.execute(
                f"SELECT status, count(*) FROM deliveries {where} GROUP BY status", args
            ):
                out[D(st)] = n
            return out

        return await self._run(go, write=False)

    async def next_ready_at(self, workspace_id: str) -> float | None:
        return await self._run(
            lambda c: c.execute(
                "SELECT min(not_before) FROM deliveries INDEXED BY deliveries_queued "
                "WHERE workspace_id = ? AND status = 'queued'",
                (workspace_id,),
            ).fetchone()[0],
            write=False,
        )

    async def prune_finished(self, before: float) -> int:
        """In batches of 1,000 rows, each its own short transaction, so the loop's hot path
        never waits long for the write lock however much there is to prune."""
        total = 0
        while True:
            n = await self._run(
                lambda c: (
                    c.execute(
                        "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_finished "
                        f"WHERE status IN {_FINAL_SQL} AND finished_at < ? LIMIT 1000)",
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
                "SELECT * FROM restarts WHERE workspace_id = ? AND phase NOT IN ('done', 'failed') "
                "ORDER BY created_at DESC LIMIT 1",
                (workspace_id,),
            ).fetchone()
            return None if row is None else rows.r_from_row(row)

        return await self._run(go, write=False)
