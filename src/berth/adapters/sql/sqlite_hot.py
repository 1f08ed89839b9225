"""The message path's statements on SQLite: accept (INSERT … ON CONFLICT DO NOTHING) and
claim (the oldest claimable queued deliveries up to the free capacity), each a function of
the connection, so an accept and its claim can share one transaction; and the common case
of both in one statement (`accept_in_flight_sql`): a message to a workspace with room and
nothing claimable queued is written in flight at once."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable

from berth.adapters.sql import rows
from berth.domain.delivery import Delivery, DeliveryStatus

__all__ = ["accept_in_flight_sql", "accept_sql", "claim_rows", "get_row"]


@functools.cache
def _insert_sql(cols: tuple[str, ...]) -> str:
    return (
        f"INSERT INTO deliveries ({', '.join(cols)}) VALUES ({', '.join(':' + k for k in cols)}) "
        "ON CONFLICT (workspace_id, caller, message_id) DO NOTHING RETURNING *"
    )


def accept_sql(
    d: Delivery, *, parse_new: bool = True
) -> Callable[[sqlite3.Connection], tuple[Delivery, bool]]:
    """The accept's statements. `parse_new=False`: a created delivery is returned as the
    caller built it (its caller reads it back after claiming)."""
    p = rows.d_params(d)
    sql = _insert_sql(tuple(p))

    def go(c: sqlite3.Connection) -> tuple[Delivery, bool]:
        row = c.execute(sql, p).fetchone()
        if row is not None:
            return (rows.d_from_row(row) if parse_new else d), True
        row = c.execute(
            "SELECT * FROM deliveries WHERE workspace_id = ? AND caller = ? AND message_id = ?",
            (d.workspace_id, d.caller, d.message_id),
        ).fetchone()
        return rows.d_from_row(row), False

    return go


# the in-flight accept binds positionally (named parameters cost a dict lookup each):
# the delivery's columns in D_COLUMNS order, then the guard's: its not_before and now (a
# message held for later is not claimable yet), workspace, now, capacity, workspace, capacity
_IN_FLIGHT_SQL = (
    f"INSERT INTO deliveries ({', '.join(rows.D_COLUMNS)}) "
    f"SELECT {', '.join('?' * len(rows.D_COLUMNS))} "
    "WHERE ? <= ? AND NOT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_queued "
    f"WHERE workspace_id = ? AND status = '{rows.QUEUED}' AND not_before <= ?) "
    "AND (? IS NULL OR (SELECT count(*) FROM deliveries INDEXED BY deliveries_in_flight "
    f"WHERE workspace_id = ? AND status = '{rows.IN_FLIGHT}') < ?)"
    " ON CONFLICT (workspace_id, caller, message_id) DO NOTHING RETURNING seq"
)


def accept_in_flight_sql(
    d: Delivery, capacity: int | None, owner: str, until: float, now: float
) -> Callable[[sqlite3.Connection], Delivery | None]:
    """Accept and claim in one statement, when claiming after the accept would take exactly
    this message: the workspace has a free slot and no claimable delivery is queued (in the
    database, this transaction's earlier writes included: the guard is claim_rows' own
    decision). The delivery, written in flight; None when that does not hold or the
    (workspace, caller, messageId) exists: the caller then takes the two-statement path
    (`accept_sql` + `claim_rows`), which decides both."""
    flying = d.copy()
    flying.status = DeliveryStatus.IN_FLIGHT
    flying.lease_owner, flying.lease_until = owner, until
    flying.forwards = d.forwards + 1
    flying.first_forwarded_at = flying.updated_at = now
    params = (
        *rows.d_values(flying),
        d.not_before,
        now,
        d.workspace_id,
        now,
        capacity,
        d.workspace_id,
        capacity,
    )

    def go(c: sqlite3.Connection) -> Delivery | None:
        row = c.execute(_IN_FLIGHT_SQL, params).fetchone()
        if row is None:
            return None
        flying.seq = row[0]
        return flying

    return go


def get_row(c: sqlite3.Connection, delivery_id: str) -> Delivery:
    row = c.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    return rows.d_from_row(row)


def claim_rows(
    c: sqlite3.Connection,
    workspace_id: str,
    capacity: int | None,
    owner: str,
    until: float,
    now: float,
) -> list[Delivery]:
    """The oldest claimable queued deliveries, up to the free capacity, now in flight."""
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
        {"owner": owner, "until": until, "now": now, "ws": workspace_id, "limit": limit},
    ).fetchall()
    return sorted((rows.d_from_row(r) for r in got), key=lambda d: d.seq)
