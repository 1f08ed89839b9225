"""The hot path's three writes on PostgreSQL, many at once: what group commit flushes.

Each takes the items of concurrent calls and answers each item as its own call would:

* accept: one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING (one commit), then
  one SELECT for the items that found their (workspace, messageId) taken;
* claim: one call of berth_claim_many, which runs berth_claim for each workspace in the
  order of their advisory lock keys (two batches never wait for each other in a cycle);
* settle: one UPDATE ... FROM unnest(...) that first locks its rows NOWAIT: a batch never
  waits for a row lock while holding others (a row someone else holds fails the batch,
  and group commit settles its items one by one, as before).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.postgres_base import PostgresBase
from berth.domain.delivery import FINAL, Delivery
from berth.ports import Settle

__all__ = ["ClaimCall", "PostgresBatches", "SettleCall"]

_BYTEA = {"request", "reply"}
_INT = {"attempts", "forwards", "reply_status"}
_FLOAT = {
    "lease_until",
    "not_before",
    "expires_at",
    "created_at",
    "first_forwarded_at",
    "finished_at",
    "updated_at",
}


def _pg_type(column: str) -> str:
    return (
        "bytea" if column in _BYTEA else "int" if column in _INT else "float8"
        if column in _FLOAT else "text"
    )  # fmt: skip


_COLS = ", ".join(rows.D_COLUMNS)
_UNNEST = ", ".join(f"${i}::{_pg_type(c)}[]" for i, c in enumerate(rows.D_COLUMNS, 1))
# Sorted by key: two batches that share keys insert them in the same order, so neither
# can wait for the other's uncommitted row while holding one the other waits for.
_ACCEPT_MANY = (
    f"INSERT INTO deliveries ({_COLS}) SELECT {_COLS} FROM unnest({_UNNEST}) AS u({_COLS}) "
    "ORDER BY random() "
    "ON CONFLICT (workspace_id, message_id) DO NOTHING RETURNING *"
)
_EXISTING = (
    "SELECT d.* FROM deliveries AS d JOIN unnest($1::text[], $2::text[]) AS u(w, m) "
    "ON d.workspace_id = u.w AND d.message_id = u.m"
)
_CLAIM_MANY = (
    "SELECT t.k, (t.d).* FROM berth_claim_many($1::text[], $2::int[], $3::text[], "
    "$4::float8[], $5::float8[]) AS t"
)
_SETTLE_MANY = f"""
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::float8[],
                         $7::float8[], $8::float8[], $9::bool[], $10::bytea[], $11::int[], $12::text[])
        AS u(id, owner, status, inc, reason, not_before, now, finished_at, set_reply, reply,
             reply_status, reply_type)
), locked AS (
    SELECT d.seq, u.* FROM deliveries AS d JOIN u ON d.id = u.id
    WHERE d.status = '{rows.IN_FLIGHT}' AND d.lease_owner = u.owner
    FOR UPDATE OF d NOWAIT
)
UPDATE deliveries AS d
SET status = l.status, attempts = d.attempts + l.inc, reason = l.reason, not_before = l.not_before,
    lease_owner = NULL, lease_until = NULL, updated_at = l.now, finished_at = l.finished_at,
    reply = CASE WHEN l.set_reply THEN l.reply ELSE d.reply END,
    reply_status = CASE WHEN l.set_reply THEN l.reply_status ELSE d.reply_status END,
    reply_type = CASE WHEN l.set_reply THEN l.reply_type ELSE d.reply_type END
FROM locked AS l
WHERE d.seq = l.seq AND d.status = '{rows.IN_FLIGHT}' AND d.lease_owner = l.owner
RETURNING d.*
"""


@dataclass(frozen=True)
class ClaimCall:
    workspace_id: str
    capacity: int | None
    owner: str
    now: float
    until: float


@dataclass(frozen=True)
class SettleCall:
    delivery_id: str
    owner: str
    how: Settle
    now: float


class PostgresBatches(PostgresBase):
    async def _accept_many(self, ds: list[Delivery]) -> list[tuple[Delivery, bool]]:
        params = [rows.d_params(d) for d in ds]
        got = await self._fetch(_ACCEPT_MANY, *([p[c] for p in params] for c in rows.D_COLUMNS))
        made = {r["id"]: rows.d_from_row(r) for r in got}
        out: dict[int, tuple[Delivery, bool]] = {
            i: (made[d.id], True) for i, d in enumerate(ds) if d.id in made
        }
        taken = [(i, d) for i, d in enumerate(ds) if i not in out]
        if taken:
            # The rows they conflicted with are committed (ON CONFLICT waited), so seen here.
            found = await self._fetch(
                _EXISTING, [d.workspace_id for _, d in taken], [d.message_id for _, d in taken]
            )
            by_key = {(r["workspace_id"], r["message_id"]): rows.d_from_row(r) for r in found}
            for i, d in taken:
                existing = by_key.get((d.workspace_id, d.message_id))
                # gone again before the SELECT (pruned, removed): accept it alone
                out[i] = (existing, False) if existing else await self._accept_one(d)
        return [out[i] for i in range(len(ds))]

    async def _claim_many(self, calls: list[ClaimCall]) -> list[list[Delivery]]:
        got = await self._fetch(
            _CLAIM_MANY,
            [c.workspace_id for c in calls],
            [c.capacity for c in calls],
            [c.owner for c in calls],
            [float(c.now) for c in calls],
            [float(c.until) for c in calls],
        )
        per: defaultdict[int, list[Delivery]] = defaultdict(list)
        for r in got:
            per[r["k"]].append(rows.d_from_row(r))
        return [sorted(per[k], key=lambda d: d.seq) for k in range(1, len(calls) + 1)]

    async def _settle_many(self, calls: list[SettleCall]) -> list[Delivery | None]:
        cols: list[list[Any]] = [[] for _ in range(12)]
        for c in calls:
            h = c.how
            now = float(c.now)
            for col, v in zip(
                cols,
                (
                    c.delivery_id,
                    c.owner,
                    h.status.value,
                    int(h.count_attempt),
                    h.reason,
                    float(h.not_before),
                    now,
                    now if h.status in FINAL else None,
                    h.reply is not None,
                    h.reply,
                    h.reply_status,
                    h.reply_type,
                ),
                strict=True,
            ):
                col.append(v)
        got = await self._fetch(_SETTLE_MANY, *cols)
        by_id = {r["id"]: rows.d_from_row(r) for r in got}
        return [by_id.get(c.delivery_id) for c in calls]

    # the single-item operations (a batch of one, and each item of a failed batch)
    async def _accept_one(self, d: Delivery) -> tuple[Delivery, bool]:
        raise NotImplementedError
