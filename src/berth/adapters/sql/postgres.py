"""The Store port on PostgreSQL: for several berth replicas sharing one delivery log.

Same schema (berth.adapters.sql.schema) and row mapping (berth.adapters.sql.rows) as
SQLite, and the same semantics; the differences are about running replicas side by side:

* migrations run under a session advisory lock, so replicas starting together apply
  each migration once, and record it in schema_migrations;
* a claim takes a per-workspace transaction advisory lock, so the capacity check and the
  claim are one atomic step across replicas, and picks rows with FOR UPDATE SKIP LOCKED
  through the partial index on queued rows, so finished deliveries never slow it down;
* leases (owner + lease_until) decide who may renew or settle; any replica takes over
  an expired lease in requeue_expired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from berth.adapters.sql import rows, schema
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus
from berth.domain.errors import Conflict, NotFound, StoreUnavailable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace
from berth.ports import Settle

try:
    import asyncpg
except ImportError as e:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("PostgreSQL support needs asyncpg: pip install 'berth[postgres]'") from e

T = TypeVar("T")
D = DeliveryStatus
# Advisory lock keys. The one-key (bigint) and two-key (int, int) spaces never overlap.
_MIGRATE_LOCK = 0x6265727468  # "berth"
_CLAIM_LOCK_CLASS = 0x62657274  # "bert": first key of the per-workspace claim lock
__all__ = ["PostgresStore"]

Conn = Any  # asyncpg.Connection (or a pool proxy for one); asyncpg ships no type hints


def _insert(table: str, params: dict[str, Any], tail: str = "") -> tuple[str, list[Any]]:
    """An INSERT of `params` with $n placeholders, and its arguments in order."""
    cols = list(params)
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) {tail}", [
        params[c] for c in cols
    ]


class PostgresStore(rows.WorkspaceUpdates):
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 20) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    # plumbing --------------------------------------------------------------
    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:  # several first calls at once must not make several pools
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.url,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        reset=_no_reset,
                    )
        return self._pool

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fn` in one transaction: every Store operation is atomic, as on SQLite."""
        with _reachable():
            pool = await self._get_pool()
            async with pool.acquire(timeout=_ACQUIRE_TIMEOUT) as conn, conn.transaction():
                return await fn(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        with _reachable():
            pool = await self._get_pool()
            return list(await pool.fetch(sql, *args, timeout=_QUERY_TIMEOUT))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        with _reachable():
            pool = await self._get_pool()
            return await pool.fetchrow(sql, *args, timeout=_QUERY_TIMEOUT)

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    async def migrate(self) -> None:
        """Create the pool and bring the schema up to date, once across all replicas."""
        pool = await self._get_pool()
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
            try:
                await conn.execute(schema.migrations_table(schema.POSTGRES))
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, script in schema.migrations(schema.POSTGRES):
                    if version not in done:
                        await self._apply(conn, version, script)
                # code, not schema: replaced on every start, so it always matches this berth
                await conn.execute(_CLAIM_FUNCTION)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATE_LOCK)

    @staticmethod
    async def _apply(conn: Conn, version: int, script: str) -> None:
        async with conn.transaction():
            for stmt in schema.statements(script):
                await conn.execute(stmt)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # workspaces ------------------------------------------------------------
    async def create_workspace(self, ws: Workspace) -> None:
        sql, args = _insert("workspaces", rows.ws_params(ws))
        pool = await self._get_pool()
        try:
            await pool.execute(sql, *args)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a workspace named {ws.name!r} exists", code="name_taken") from None

    async def get_workspace(self, ref: str) -> Workspace:
        row = await self._fetchrow(
            "SELECT * FROM workspaces WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC LIMIT 1", ref
        )
        if row is None:
            raise NotFound(f"no workspace {ref!r}", code="workspace_not_found")
        return rows.ws_from_row(row)

    async def list_workspaces(self) -> list[Workspace]:
        return [
            rows.ws_from_row(r)
            for r in await self._fetch("SELECT * FROM workspaces ORDER BY created_at")
        ]

    async def _update_ws(
        self,
        ws_id: str,
        only_from: frozenset[WorkspaceState] | None,
        fields: dict[str, Any],
    ) -> Workspace | None:
        args: list[Any] = [ws_id]
        sets = []
        for k, v in fields.items():
            args.append(rows.ws_value(k, v))
            sets.append(f"{k} = ${len(args)}")
        where = "id = $1"
        if only_from is not None:
            where += f" AND state IN {rows.sql_set(only_from)}"
        row = await self._fetchrow(
            f"UPDATE workspaces SET {', '.join(sets)} WHERE {where} RETURNING *", *args
        )
        return None if row is None else rows.ws_from_row(row)

    async def delete_workspace(self, ws_id: str) -> None:
        pool = await self._get_pool()
        await pool.execute("DELETE FROM workspaces WHERE id = $1", ws_id)

    async def workspace_by_token(self, token_hash: str) -> Workspace | None:
        row = await self._fetchrow(
            "SELECT * FROM workspaces WHERE token_hash = $1 OR run_token_hash = $1 LIMIT 1",
            token_hash,
        )
        return None if row is None else rows.ws_from_row(row)

    # deliveries ------------------------------------------------------------
    async def accept(self, d: Delivery) -> tuple[Delivery, bool]:
        sql, args = _insert(
            "deliveries",
            rows.d_params(d),
            "ON CONFLICT (workspace_id, message_id) DO NOTHING RETURNING *",
        )

        # One autocommit statement in the common case (the hot path: one round trip).
        row = await self._fetchrow(sql, *args)
        if row is not None:
            return rows.d_from_row(row), True
        # The conflicting row is committed (ON CONFLICT waited for it), so this sees it.
        row = await self._fetchrow(
            "SELECT * FROM deliveries WHERE workspace_id = $1 AND message_id = $2",
            d.workspace_id,
            d.message_id,
        )
        return rows.d_from_row(row), False

    async def get_delivery(self, delivery_id: str) -> Delivery:
        row = await self._fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
        if row is None:
            raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
        return rows.d_from_row(row)

    async def find_delivery(self, workspace_id: str, message_id: str) -> Delivery | None:
        row = await self._fetchrow(
            "SELECT * FROM deliveries WHERE workspace_id = $1 AND message_id = $2",
            workspace_id,
            message_id,
        )
        return None if row is None else rows.d_from_row(row)

    async def claim(
        self,
        workspace_id: str,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]:
        # One round trip, also when there is nothing to claim (see _CLAIM_FUNCTION).
        got = await self._fetch(
            "SELECT * FROM berth_claim($1, $2, $3, $4, $5)",
            workspace_id,
            capacity,
            owner,
            float(now),
            float(now + lease_seconds),
        )
        return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)

    async def renew(self, owner: str, ids: list[str], lease_until: float) -> int:
        if not ids:
            return 0
        pool = await self._get_pool()
        status = await pool.execute(
            f"UPDATE deliveries SET lease_until = $1 WHERE status = '{rows.IN_FLIGHT}' AND lease_owner = $2 "
            "AND id = ANY($3::text[])",
            float(lease_until),
            owner,
            list(ids),
        )
        return _rowcount(status)

    async def settle(
        self, delivery_id: str, owner: str, how: Settle, now: float
    ) -> Delivery | None:
        args: list[Any] = [
            delivery_id,
            owner,
            how.status.value,
            int(how.count_attempt),
            how.reason,
            float(how.not_before),
            float(now),
            float(now) if how.status in FINAL else None,
        ]
        sets = (
            "status = $3, attempts = attempts + $4, reason = $5, not_before = $6, "
            "lease_owner = NULL, lease_until = NULL, updated_at = $7, finished_at = $8"
        )
        if how.reply is not None:
            args += [how.reply, how.reply_status]
            sets += ", reply = $9, reply_status = $10"
        row = await self._fetchrow(
            f"UPDATE deliveries SET {sets} WHERE id = $1 AND status = '{rows.IN_FLIGHT}' "
            "AND lease_owner = $2 RETURNING *",
            *args,
        )
        return None if row is None else rows.d_from_row(row)

    async def requeue_in_flight(self, workspace_id: str | None = None) -> list[str]:
        where, args = ("AND workspace_id = $1", [workspace_id]) if workspace_id else ("", [])
        got = await self._fetch(
            f"WITH moved AS (UPDATE deliveries SET status = '{rows.QUEUED}', lease_owner = NULL, lease_until = NULL "
            f"WHERE status = '{rows.IN_FLIGHT}' {where} RETURNING id, seq) SELECT id FROM moved ORDER BY seq",
            *args,
        )
        return [r["id"] for r in got]

    async def requeue_expired(self, now: float) -> list[Delivery]:
        got = await self._fetch(
            f"UPDATE deliveries SET status = '{rows.QUEUED}', lease_owner = NULL, lease_until = NULL, "
            f"reason = 'lease expired: redelivered' WHERE status = '{rows.IN_FLIGHT}' AND lease_until < $1 "
            "RETURNING *",
            float(now),
        )
        return _by_seq(got)

    async def finish(
        self,
        delivery_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        row = await self._fetchrow(
            "UPDATE deliveries SET status = $2, reason = $3, finished_at = $4, updated_at = $4, "
            "lease_owner = NULL, lease_until = NULL "
            f"WHERE id = $1 AND status IN {rows.sql_set(only_from)} RETURNING *",
            delivery_id,
            to.value,
            reason,
            float(now),
        )
        return None if row is None else rows.d_from_row(row)

    async def finish_all(
        self,
        workspace_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> list[Delivery]:
        got = await self._fetch(
            "UPDATE deliveries SET status = $2, reason = $3, finished_at = $4, updated_at = $4, "
            "lease_owner = NULL, lease_until = NULL "
            f"WHERE workspace_id = $1 AND status IN {rows.sql_set(only_from)} RETURNING *",
            workspace_id,
            to.value,
            reason,
            float(now),
        )
        return _by_seq(got)

    async def requeue(
        self,
        delivery_id: str,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        # To the back of the queue: a new sequence number.
        row = await self._fetchrow(
            f"UPDATE deliveries SET status = '{rows.QUEUED}', attempts = 0, reason = $3, "
            "finished_at = NULL, not_before = 0, updated_at = $2, "
            "seq = nextval(pg_get_serial_sequence('deliveries', 'seq')) "
            f"WHERE id = $1 AND status IN {rows.sql_set(only_from)} RETURNING *",
            delivery_id,
            float(now),
            reason,
        )
        return None if row is None else rows.d_from_row(row)

    async def expire_due(self, now: float) -> list[Delivery]:
        got = await self._fetch(
            f"UPDATE deliveries SET status = '{rows.EXPIRED}', reason = 'ttl passed', finished_at = $1, updated_at = $1 "
            f"WHERE status = '{rows.QUEUED}' AND expires_at IS NOT NULL AND expires_at <= $1 RETURNING *",
            float(now),
        )
        return _by_seq(got)

    async def list_deliveries(
        self,
        workspace_id: str,
        status: DeliveryStatus | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        where, args = "workspace_id = $1", [workspace_id]
        if status is not None:
            where += " AND status = $2"
            args.append(status.value)
        got = await self._fetch(
            f"SELECT * FROM deliveries WHERE {where} ORDER BY seq DESC LIMIT {int(limit)}", *args
        )
        return [rows.d_from_row(r) for r in reversed(got)]

    async def pending(self, workspace_id: str) -> tuple[int, int]:
        row = await self._fetchrow(
            f"SELECT (SELECT count(*) FROM deliveries WHERE workspace_id = $1 AND status = '{rows.QUEUED}') AS q, "
            f"(SELECT count(*) FROM deliveries WHERE workspace_id = $1 AND status = '{rows.IN_FLIGHT}') AS f",
            workspace_id,
        )
        return int(row["q"]), int(row["f"])

    async def prune_finished(self, before: float) -> int:
        pool = await self._get_pool()
        status = await pool.execute(
            f"DELETE FROM deliveries WHERE status IN {rows.sql_set(FINAL)} AND finished_at < $1",
            float(before),
        )
        return _rowcount(status)

    # restarts --------------------------------------------------------------
    async def save_restart(self, r: RestartRecord) -> None:
        p = rows.r_params(r)
        updates = ", ".join(f"{k} = excluded.{k}" for k in p if k != "id")
        sql, args = _insert("restarts", p, f"ON CONFLICT (id) DO UPDATE SET {updates}")
        pool = await self._get_pool()
        await pool.execute(sql, *args)

    async def get_restart(self, workspace_id: str, restart_id: str) -> RestartRecord:
        row = await self._fetchrow(
            "SELECT * FROM restarts WHERE id = $1 AND workspace_id = $2", restart_id, workspace_id
        )
        if row is None:
            raise NotFound(f"no restart {restart_id!r}", code="restart_not_found")
        return rows.r_from_row(row)

    async def list_restarts(self, workspace_id: str, limit: int = 50) -> list[RestartRecord]:
        got = await self._fetch(
            "SELECT * FROM restarts WHERE workspace_id = $1 ORDER BY created_at DESC LIMIT $2",
            workspace_id,
            limit,
        )
        return [rows.r_from_row(r) for r in got]

    async def active_restart(self, workspace_id: str) -> RestartRecord | None:
        row = await self._fetchrow(
            "SELECT * FROM restarts WHERE workspace_id = $1 "
            f"AND phase NOT IN {rows.RESTART_FINISHED} ORDER BY created_at DESC LIMIT 1",
            workspace_id,
        )
        return None if row is None else rows.r_from_row(row)


# The claim: the oldest ready queued rows of one workspace, through the partial index
# deliveries_queued (workspace_id, seq) WHERE status = 'queued'. SKIP LOCKED passes over
# rows another transaction is changing (a cancel, a retry) instead of waiting for it.
async def _no_reset(conn: Conn) -> None:
    """The pool's reset on release: nothing to undo. berth leaves no session state on a
    connection (no LISTEN, cursors, SET, or session locks outside migrate(), which unlocks in
    `finally`); asyncpg's default reset costs a round trip per operation."""


# Which rows a claim takes: over the partial index deliveries_queued (workspace_id, seq)
# WHERE status = 'queued', however many finished rows the table holds.
_PICK = (
    "SELECT seq FROM deliveries WHERE workspace_id = {ws} AND status = '" + rows.QUEUED + "' "
    "AND not_before <= {now} ORDER BY seq LIMIT {limit} FOR UPDATE SKIP LOCKED"
)

# The claim, as one function call: the per-workspace lock (capacity across replicas), the
# in-flight count and the SKIP LOCKED claim in one round trip. Each statement of a VOLATILE
# function takes a fresh snapshot (READ COMMITTED), so the count sees every claim committed
# before the lock was granted. The lock key is the same as a claim in separate statements.
_CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION berth_claim(p_ws text, p_cap integer, p_owner text, p_now double precision,
                                       p_until double precision)
RETURNS SETOF deliveries LANGUAGE plpgsql VOLATILE AS $$
DECLARE n bigint;  -- NULL: uncapped
BEGIN
    IF p_cap IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, hashtext(p_ws));
        SELECT p_cap - count(*) INTO n FROM deliveries WHERE workspace_id = p_ws AND status = '{rows.IN_FLIGHT}';
        IF n <= 0 THEN RETURN; END IF;
    END IF;
    RETURN QUERY
    WITH picked AS (
        {_PICK.format(ws="p_ws", now="p_now", limit="n")}
    ), moved AS (
        UPDATE deliveries AS d
        SET status = '{rows.IN_FLIGHT}', lease_owner = p_owner, lease_until = p_until, forwards = d.forwards + 1,
            first_forwarded_at = COALESCE(d.first_forwarded_at, p_now), updated_at = p_now
        FROM picked WHERE d.seq = picked.seq
        RETURNING d.*
    )
    SELECT * FROM moved;
END $$
"""

# The claim statement the function runs, with positional parameters (for EXPLAIN in tests).
_CLAIM_SQL = f"""
WITH picked AS ({_PICK.format(ws="$1", now="$2", limit="$3")})
UPDATE deliveries AS d
SET status = '{rows.IN_FLIGHT}', lease_owner = $4, lease_until = $5, forwards = d.forwards + 1,
    first_forwarded_at = COALESCE(d.first_forwarded_at, $2), updated_at = $2
FROM picked
WHERE d.seq = picked.seq
RETURNING d.*
"""


_ACQUIRE_TIMEOUT = 10.0
_QUERY_TIMEOUT = 30.0


@contextmanager
def _reachable() -> Iterator[None]:
    """A lost or refused connection is the service being away (503), not a bug (500)."""
    try:
        yield
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    ) as e:
        raise StoreUnavailable(f"the database is unavailable: {e.__class__.__name__}: {e}") from e


def _rowcount(status: str) -> int:
    """The row count of an asyncpg command tag such as 'UPDATE 3' or 'DELETE 0'."""
    return int(status.rsplit(" ", 1)[-1])


def _by_seq(got: Sequence[Any]) -> list[Delivery]:
    return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)
