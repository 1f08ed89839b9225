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
from berth.domain.delivery import Delivery, DeliveryStatus
from berth.domain.errors import StoreUnavailable

try:
    import asyncpg
except ImportError as e:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("PostgreSQL support needs asyncpg: pip install 'berth[postgres]'") from e

T = TypeVar("T")
D = DeliveryStatus
# Advisory lock keys. The one-key (bigint) and two-key (int, int) spaces never overlap.
_MIGRATE_LOCK = 0x6265727468  # "berth"
_CLAIM_LOCK_CLASS = 0x62657274  # "bert": first key of the per-workspace claim lock
__all__ = ["PostgresBase"]

Conn = Any  # asyncpg.Connection (or a pool proxy for one); asyncpg ships no type hints


def _insert(table: str, params: dict[str, Any], tail: str = "") -> tuple[str, list[Any]]:
    """An INSERT of `params` with $n placeholders, and its arguments in order."""
    cols = list(params)
    marks = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) {tail}", [
        params[c] for c in cols
    ]


class PostgresBase:
    # server-side functions: code, not schema; replaced on every start (see migrate)
    _FUNCTIONS: tuple[str, ...] = ()

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

    async def whereabouts(self) -> str:
        """`<database> <schema>` as this store's connections see them (the fast lane checks
        that its own connection writes to the same)."""
        row = await self._fetchrow("SELECT current_database() || ' ' || current_schema() AS at")
        return str(row["at"])

    async def _execute(self, sql: str, *args: Any) -> str:
        with _reachable():
            pool = await self._get_pool()
            return str(await pool.execute(sql, *args, timeout=_QUERY_TIMEOUT))

    async def ping(self) -> None:
        await self._fetchrow("SELECT 1")

    async def migrate(self) -> None:
        """Create the pool and bring the schema up to date, once across all replicas."""
        with _reachable():
            await self._migrate()

    async def _migrate(self) -> None:
        pool = await self._get_pool()
        async with pool.acquire(timeout=_ACQUIRE_TIMEOUT) as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
            try:
                await conn.execute(schema.migrations_table(schema.POSTGRES))
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, script in schema.migrations(schema.POSTGRES):
                    if version not in done:
                        await self._apply(conn, version, script)
                # code, not schema: replaced on every start, so it always matches this berth
                for function in (_CLAIM_FUNCTION, _CLAIM_MANY_FUNCTION, *self._FUNCTIONS):
                    await conn.execute(function)
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

# The hot path's functions run with enable_seqscan off: their statements use their indexes
# whatever the statistics say (those of a new, empty log would pick sequential scans, and
# a plan cached in a pooled connection would keep them while the table grows).
#
# The claim, as one function call: the per-workspace lock (capacity across replicas), the
# in-flight count and the SKIP LOCKED claim in one round trip. Each statement of a VOLATILE
# function takes a fresh snapshot (READ COMMITTED), so the count sees every claim committed
# before the lock was granted. The lock key is the same as a claim in separate statements.
_CLAIM_FUNCTION = f"""
CREATE OR REPLACE FUNCTION berth_claim(p_ws text, p_cap integer, p_owner text, p_now double precision,
                                       p_until double precision)
RETURNS SETOF deliveries LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off AS $$
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

# Claims of several workspaces in one call (group commit): berth_claim for each, in the
# order of their lock keys, so two such calls never wait for each other in a cycle. `k` is
# the position of the claim in the arrays (from 1). A claim with a `p_if` (ids separated by
# spaces) runs only when a delivery with one of those ids exists: the claim of a flush's
# accept_claims of one workspace, made only when one of their accepts created its delivery
# (ids are fresh, so an id exists only if that insert did).
#
# `p_own`: those accepts wrote their deliveries in flight already, leased to `p_owner` (one
# row version instead of a queued insert and a claim's update). The claim then checks, under
# the workspace's lock, what berth_claim would have decided: nothing claimable is queued
# there and the workspace is not over its capacity (the count sees this transaction's own
# rows, and every claim committed before the lock was granted). If so those rows are its
# claim; if not they are put back in the queue (returned with k negated) and berth_claim
# runs as it would have (oldest first, up to the free capacity), so the outcome is the same
# as accepting queued and claiming. A flush that writes in flight waits for nothing new:
# the check runs where the claim would have, under the same lock, taken in the same order.
#
# The body is replaced at every start, so the last replica started decides it. A new form
# of arguments is a new function: the forms of before (five and six arguments, and
# berth_write's of before) stay in the database for replicas of the versions before, during
# a rolling deploy, and no body of theirs is given rows written in flight.

# The rows of a claim's accepts written in flight by this flush: inserted by this very
# transaction (xmin; PostgreSQL 13 or later), so a delivery accepted again while it is
# being forwarded is never taken for one (ids are fresh, but nothing here relies on it);
# the lease, the forward count and the time tell them from a row this flush accepted queued.
_OWN = (
    "{x}id = ANY ({ids}) AND {x}xmin = pg_current_xact_id()::xid "
    "AND {x}status = '" + rows.IN_FLIGHT + "' AND {x}lease_owner = {owner} "
    "AND {x}forwards = 1 AND {x}first_forwarded_at = {now}"
)
_OWN_I = {"ids": "ids", "owner": "p_owner[i]", "now": "p_now[i]"}  # the loop's claim i
# every claim of the call at once (u: the arguments, unnested)
_OWN_SET = _OWN.format(x="", ids="string_to_array(u.ifs, ' ')", owner="u.owner", now="u.now")
_CLAIM_MANY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION berth_claim_many(p_ws text[], p_cap integer[], p_owner text[],
                                            p_now double precision[], p_until double precision[],
                                            p_if text[], p_own boolean[])
RETURNS TABLE (k integer, d deliveries) LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off AS $$
DECLARE i integer; ids text[]; n bigint; mine bigint; keep bigint; quick integer[];
BEGIN
    IF true = ALL (p_own) THEN
        -- every claim is of rows written in flight (the proxy's accept_claims): the locks in
        -- their order, then one statement that finds the claims keeping all their rows, and
        -- one that returns those rows; the loop below decides the others, one by one
        PERFORM pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, s.h) FROM (
            SELECT DISTINCT hashtext(u.ws) AS h FROM unnest(p_ws, p_cap) AS u(ws, cap)
            WHERE u.cap IS NOT NULL ORDER BY 1
        ) AS s;
        SELECT array_agg(q.k) INTO quick FROM (
            SELECT u.k, u.cap,
                (SELECT count(*) FROM deliveries WHERE {_OWN_SET}) AS mine,
                (SELECT count(*) FROM deliveries WHERE workspace_id = u.ws AND status = '{rows.IN_FLIGHT}') AS n,
                EXISTS (
                    SELECT 1 FROM deliveries WHERE workspace_id = u.ws AND status = '{rows.QUEUED}'
                        AND not_before <= u.now
                ) AS older,
                -- a workspace with two claims in the call (its capacity changed between two
                -- accept_claims) is the loop's: the first may put rows back that the second
                -- must then see as older work
                (SELECT count(*) FROM unnest(p_ws) AS w WHERE w = u.ws) = 1 AS alone
            FROM unnest(p_ws, p_cap, p_owner, p_now, p_if) WITH ORDINALITY AS u(ws, cap, owner, now, ifs, k)
        ) AS q
        WHERE q.mine > 0 AND NOT q.older AND (q.cap IS NULL OR q.n <= q.cap) AND q.alone;
        IF quick IS NOT NULL THEN
            RETURN QUERY
            SELECT u.k::integer, x
            FROM unnest(p_owner, p_now, p_if) WITH ORDINALITY AS u(owner, now, ifs, k)
            JOIN deliveries AS x ON {_OWN_SET}
            WHERE u.k = ANY (quick);
        END IF;
    END IF;
    FOR i IN SELECT u.k FROM unnest(p_ws) WITH ORDINALITY AS u(ws, k) ORDER BY hashtext(u.ws), u.ws, u.k LOOP
        CONTINUE WHEN i = ANY (quick);
        ids := string_to_array(p_if[i], ' ');
        CONTINUE WHEN p_if[i] IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries WHERE id = ANY (ids));
        mine := 0;
        IF p_own[i] THEN
            SELECT count(*) INTO mine FROM deliveries WHERE {_OWN.format(x="", **_OWN_I)};
        END IF;
        IF mine > 0 THEN
            IF p_cap[i] IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, hashtext(p_ws[i]));
                SELECT count(*) INTO n FROM deliveries WHERE workspace_id = p_ws[i] AND status = '{rows.IN_FLIGHT}';
            END IF;
            IF EXISTS (
                SELECT 1 FROM deliveries WHERE workspace_id = p_ws[i] AND status = '{rows.QUEUED}'
                    AND not_before <= p_now[i]
            ) THEN
                keep := 0;  -- older work waits: back in the queue, and the claim decides
            ELSE
                keep := CASE WHEN p_cap[i] IS NULL THEN mine ELSE greatest(0, p_cap[i] - (n - mine)) END;
            END IF;
            IF keep < mine THEN
                RETURN QUERY
                WITH back AS (
                    UPDATE deliveries AS x
                    SET status = '{rows.QUEUED}', lease_owner = NULL, lease_until = NULL,
                        forwards = x.forwards - 1, first_forwarded_at = NULL, updated_at = p_now[i]
                    WHERE x.seq IN (
                        SELECT seq FROM deliveries WHERE {_OWN.format(x="", **_OWN_I)} ORDER BY seq OFFSET keep
                    )
                    RETURNING x
                )
                SELECT -i, back.x FROM back;
            END IF;
            IF keep > 0 THEN
                RETURN QUERY SELECT i, x FROM deliveries AS x WHERE {_OWN.format(x="x.", **_OWN_I)};
                CONTINUE;
            END IF;
        END IF;
        RETURN QUERY SELECT i, c FROM berth_claim(p_ws[i], p_cap[i], p_owner[i], p_now[i], p_until[i]) AS c;
    END LOOP;
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
        asyncpg.TooManyConnectionsError,
        # the server going away: admin/crash shutdown, cannot connect now (57P0x)
        asyncpg.exceptions.OperatorInterventionError,
    ) as e:
        raise StoreUnavailable(f"the database is unavailable: {e.__class__.__name__}: {e}") from e


def _rowcount(status: str) -> int:
    """The row count of an asyncpg command tag such as 'UPDATE 3' or 'DELETE 0'."""
    return int(status.rsplit(" ", 1)[-1])


def _by_seq(got: Sequence[Any]) -> list[Delivery]:
    return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)
