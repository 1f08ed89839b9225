"""The hot path's three writes on PostgreSQL, many at once: what group commit flushes.

The concurrent accepts, claims and settles of one flush are one call of the server-side
function berth_write (one round trip, one commit, one fsync), and each call is answered as
its own would be:

* settles first: one UPDATE ... FROM unnest(...) that locks its rows NOWAIT, so a flush
  never waits for a row lock while holding others (a row someone else holds fails the
  flush, and group commit runs its calls one by one, as before);
* accepts: one INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING, then one SELECT
  for the calls that found their (workspace, caller, messageId) taken;
* claims last: berth_claim for each workspace in the order of their advisory lock keys
  (berth_claim_many); the settles before them freed capacity for them. An accept_claim is
  an accept and a claim of its workspace made only if that accept created the delivery:
  a message to an idle workspace is accepted and claimed in one commit, as on SQLite. The
  accept_claims of one workspace in a flush share one claim (made if any of them created
  its delivery), whose deliveries go to one of those callers to forward. A message that
  may go at once is inserted in flight (one row version, not a queued one and a claim's
  update); the claim checks under the workspace's lock that berth_claim would have taken
  it, and puts it back in the queue if not (see berth_claim_many).

A flush waits only for advisory locks (taken in one global order, last) and for the
uncommitted insert of the same message elsewhere (in sorted order, before any advisory
lock): no two flushes can wait for each other in a cycle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.group_commit import ItemError
from berth.adapters.sql.postgres_base import PostgresBase
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus
from berth.ports import Settle

__all__ = ["AcceptClaimCall", "ClaimCall", "PostgresBatches", "SettleCall", "Write", "write_key"]

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


_SETTLE_ARGS = [
    ("id", "text"),
    ("owner", "text"),
    ("status", "text"),
    ("inc", "integer"),
    ("reason", "text"),
    ("not_before", "float8"),
    ("now", "float8"),
    ("finished_at", "float8"),
    ("set_reply", "boolean"),
    ("reply", "bytea"),
    ("reply_status", "integer"),
    ("reply_type", "text"),
    ("forward", "integer"),
]
_ACCEPT_ARGS = [(c, _pg_type(c)) for c in rows.D_COLUMNS]
_CLAIM_ARGS = [
    ("ws", "text"),
    ("cap", "integer"),
    ("owner", "text"),
    ("now", "float8"),
    ("until", "float8"),
    ("if", "text"),
    ("own", "boolean"),
]
_ARGS = (
    [(f"s_{n}", t) for n, t in _SETTLE_ARGS]
    + [(f"a_{n}", t) for n, t in _ACCEPT_ARGS]
    + [(f"c_{n}", t) for n, t in _CLAIM_ARGS]
)


def _unnest(prefix: str, args: list[tuple[str, str]]) -> str:
    names = [n for n, _ in args]
    return f"unnest({', '.join(prefix + n for n in names)}) AS u({', '.join(names)})"


_COLS = ", ".join(rows.D_COLUMNS)
_IN_FLIGHT = rows.IN_FLIGHT
# One flush: its settles, accepts and claims in one statement (one round trip, one commit).
# Rows come back as (kind, k, row): 'settle' and 'accept' rows are known by their id,
# 'existing' (the row an accept found in its place) and 'claim' rows by k, the position
# of their call among the calls of that kind (from 1).
WRITE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION berth_write({", ".join(f"{n} {t}[]" for n, t in _ARGS)})
RETURNS TABLE (w_kind text, w_k integer, w_row deliveries) LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE inserted bigint;
BEGIN
    IF cardinality(s_id) > 0 THEN
        -- NOWAIT: a flush never waits for a row lock (so never holds some while waiting)
        RETURN QUERY
        WITH u AS (SELECT * FROM {_unnest("s_", _SETTLE_ARGS)}),
        locked AS (  -- by id alone: one probe of its unique index each; moved checks the rest
            SELECT x.seq, u.* FROM u, LATERAL (
                SELECT seq FROM deliveries WHERE id = u.id FOR UPDATE NOWAIT
            ) AS x
        ), moved AS (
            UPDATE deliveries AS x
            SET status = l.status, attempts = x.attempts + l.inc, reason = l.reason,
                not_before = l.not_before, lease_owner = NULL, lease_until = NULL,
                updated_at = l.now, finished_at = l.finished_at,
                reply = CASE WHEN l.set_reply THEN l.reply ELSE x.reply END,
                reply_status = CASE WHEN l.set_reply THEN l.reply_status ELSE x.reply_status END,
                reply_type = CASE WHEN l.set_reply THEN l.reply_type ELSE x.reply_type END
            FROM locked AS l
            WHERE x.seq = l.seq AND x.status = '{_IN_FLIGHT}' AND x.lease_owner = l.owner
                AND (l.forward IS NULL OR x.forwards = l.forward)
            RETURNING x
        )
        SELECT 'settle', 0, moved.x FROM moved;
    END IF;
    IF cardinality(a_id) > 0 THEN
        -- in key order: two flushes sharing messages wait for each other in one order only
        RETURN QUERY
        WITH ins AS (
            INSERT INTO deliveries AS x ({_COLS})
            SELECT {_COLS} FROM {_unnest("a_", _ACCEPT_ARGS)}
            ORDER BY u.workspace_id, u.caller, u.message_id
            ON CONFLICT (workspace_id, caller, message_id) DO NOTHING RETURNING x
        )
        SELECT 'accept', 0, ins.x FROM ins;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted < cardinality(a_id) THEN
            -- a new snapshot: sees the rows the conflicts waited for
            RETURN QUERY
            SELECT 'existing', u.n::integer, x
            FROM unnest(a_workspace_id, a_caller, a_message_id, a_id)
                WITH ORDINALITY AS u(w, c, m, i, n)
            JOIN deliveries AS x ON x.workspace_id = u.w AND x.caller = u.c AND x.message_id = u.m
            WHERE x.id <> u.i;
        END IF;
    END IF;
    IF cardinality(c_ws) > 0 THEN
        RETURN QUERY
        SELECT CASE WHEN t.k < 0 THEN 'requeued' ELSE 'claim' END, abs(t.k), t.d
        FROM berth_claim_many(c_ws, c_cap, c_owner, c_now, c_until, c_if, c_own) AS t;
    END IF;
END $$
"""
_WRITE = (
    "SELECT t.w_kind, t.w_k, (t.w_row).* FROM berth_write("
    + ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(_ARGS, 1))
    + ") AS t"
)


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


@dataclass(frozen=True)
class AcceptClaimCall:
    """An accept, and a claim of its workspace if the accept created the delivery."""

    delivery: Delivery
    claim: ClaimCall


# an accept, a claim, a settle, an accept_claim
Write = Delivery | ClaimCall | SettleCall | AcceptClaimCall


def write_key(w: Write) -> Hashable:
    """Calls with the same key never share a flush (the later one sees the earlier's effect)."""
    if isinstance(w, AcceptClaimCall):
        w = w.delivery
    if isinstance(w, Delivery):
        return ("accept", w.workspace_id, w.caller, w.message_id)
    if isinstance(w, ClaimCall):
        return ("claim", w.workspace_id)
    return ("settle", w.delivery_id)


class PostgresBatches(PostgresBase):
    _FUNCTIONS = (*PostgresBase._FUNCTIONS, WRITE_FUNCTION)

    async def _write_many(self, writes: list[Write]) -> list[Any]:
        """One statement for all: settles, then accepts, then claims (see berth_write)."""
        settles: list[SettleCall] = []
        accepts: list[Delivery] = []
        claims: list[_Claim] = []
        k_of: list[int] = []  # for each write, its claim's position (from 1), or 0
        groups: dict[tuple[str, int | None, str], int] = {}
        for w in writes:
            k = 0
            if isinstance(w, SettleCall):
                settles.append(w)
            elif isinstance(w, Delivery):
                accepts.append(w)
            elif isinstance(w, ClaimCall):
                claims.append(_Claim(w))
                k = len(claims)
            else:
                # the accept_claims of one workspace share one claim (up to its capacity),
                # made if any of their accepts created a delivery; each message that may go
                # at once is written in flight, and the claim checks that it may
                c = w.claim
                k = groups.get((c.workspace_id, c.capacity, c.owner), 0)
                if not k:
                    claims.append(_Claim(c, only_if=[]))
                    k = groups[(c.workspace_id, c.capacity, c.owner)] = len(claims)
                shared = claims[k - 1]
                assert shared.only_if is not None
                shared.only_if.append(w.delivery.id)
                flying = _in_flight(w.delivery, shared.call)
                shared.own = shared.own or flying is not None
                accepts.append(flying or w.delivery)
            k_of.append(k)
        got = await self._fetch(
            _WRITE, *_settle_args(settles), *_accept_args(accepts), *_claim_args(claims)
        )
        by_id: dict[str, Delivery] = {}
        existing: dict[int, Delivery] = {}
        claimed: defaultdict[int, list[Delivery]] = defaultdict(list)
        latest: dict[str, Delivery] = {}  # what the flush's claims made of each row
        requeued: dict[str, Delivery] = {}  # written in flight, put back in the queue
        for r in got:
            kind, d = r["w_kind"], rows.d_from_row(r)
            if kind == "claim":
                claimed[r["w_k"]].append(d)
                latest[d.id] = d
            elif kind == "existing":
                existing[r["w_k"]] = d
            elif kind == "requeued":
                requeued[d.id] = d
            else:
                by_id[d.id] = d
        latest = {**requeued, **latest}  # a row put back and then claimed again is claimed
        out: list[Any] = []
        n_accept = 0
        callers: defaultdict[int, list[int]] = defaultdict(list)  # shared claim -> out places
        for w, k in zip(writes, k_of, strict=True):
            if isinstance(w, SettleCall):
                out.append(by_id.get(w.delivery_id))
                continue
            if isinstance(w, ClaimCall):
                out.append(sorted(claimed[k], key=lambda d: d.seq))
                continue
            n_accept += 1
            d = w if isinstance(w, Delivery) else w.delivery
            if d.id in by_id:
                accepted = (by_id[d.id], True)
            elif n_accept in existing:
                accepted = (existing[n_accept], False)
            else:  # its conflicting row went before the lookup: alone, now
                try:
                    accepted = await self._accept_one(d)
                except Exception as e:  # this item's failure: the flush is committed
                    out.append(ItemError(e))
                    continue
            if isinstance(w, Delivery):
                out.append(accepted)
                continue
            # its own row as stored: claimed by its workspace's claim or an earlier one in
            # the flush (each takes the oldest first)
            stored, created = accepted
            callers[k].append(len(out))
            out.append((latest.get(stored.id, stored) if created else stored, created, []))
        # what a shared claim took goes to one of its callers, to forward, once: the first
        # whose accept created a delivery (else, were ids ever not fresh, the first answered)
        for k, places in callers.items():
            if claimed[k]:
                i = next((i for i in places if out[i][1]), places[0])
                out[i] = (*out[i][:2], sorted(claimed[k], key=lambda d: d.seq))
        return out

    async def _write_one(self, w: Write) -> Any:
        if isinstance(w, AcceptClaimCall):  # one statement, as in a flush
            (got,) = await self._write_many([w])
            if isinstance(got, ItemError):
                raise got.error
            return got
        if isinstance(w, Delivery):
            return await self._accept_one(w)
        if isinstance(w, ClaimCall):
            return await self._claim_one(w)
        return await self._settle_one(w)

    # the single-item operations (a flush of one, and each call of a failed flush)
    async def _accept_one(self, d: Delivery) -> tuple[Delivery, bool]:
        raise NotImplementedError

    async def _claim_one(self, c: ClaimCall) -> list[Delivery]:
        raise NotImplementedError

    async def _settle_one(self, c: SettleCall) -> Delivery | None:
        raise NotImplementedError


def _columns(n: int, values: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of n values as n column lists (empty lists for no rows)."""
    return [list(c) for c in zip(*values, strict=True)] if values else [[] for _ in range(n)]


def _settle_args(calls: list[SettleCall]) -> list[list[Any]]:
    return _columns(
        len(_SETTLE_ARGS),
        [
            (
                c.delivery_id,
                c.owner,
                c.how.status.value,
                int(c.how.count_attempt),
                c.how.reason,
                float(c.how.not_before),
                float(c.now),
                float(c.now) if c.how.status in FINAL else None,
                c.how.reply is not None,
                c.how.reply,
                c.how.reply_status,
                c.how.reply_type,
                c.how.forward,
            )
            for c in calls
        ],
    )


def _accept_args(ds: list[Delivery]) -> list[list[Any]]:
    params = [rows.d_params(d) for d in ds]
    return [[p[c] for p in params] for c in rows.D_COLUMNS]


@dataclass
class _Claim:
    """A claim of a flush: a dispatcher's, or the one the accept_claims of a workspace
    share, made only if one of their ids exists (`only_if`), and whose accepts wrote some
    of their deliveries in flight (`own`: berth_claim_many's p_own)."""

    call: ClaimCall
    only_if: list[str] | None = None
    own: bool = False


def _claim_args(claims: list[_Claim]) -> list[list[Any]]:
    return _columns(
        len(_CLAIM_ARGS),
        [
            (
                c.call.workspace_id,
                c.call.capacity,
                c.call.owner,
                float(c.call.now),
                float(c.call.until),
                None if c.only_if is None else " ".join(_no_space(i) for i in c.only_if),
                c.own,
            )
            for c in claims
        ],
    )


def _in_flight(d: Delivery, c: ClaimCall) -> Delivery | None:
    """The accepted message as its claim would leave it, when it may go at once (new, and
    not held for later): written so, the claim only checks it (berth_claim_many's p_own).
    Its lease and times are the shared claim's, by which the claim knows its rows."""
    if d.status is not DeliveryStatus.QUEUED or d.forwards != 0 or d.not_before > c.now:
        return None
    flying = d.copy()
    flying.status = DeliveryStatus.IN_FLIGHT
    flying.lease_owner, flying.lease_until = c.owner, float(c.until)
    flying.forwards = 1
    flying.first_forwarded_at = flying.updated_at = float(c.now)
    return flying


def _no_space(delivery_id: str) -> str:
    """A claim's ids travel space-separated (berth_claim_many's p_if); berth's ids are UUIDs."""
    if " " in delivery_id:
        raise ValueError(f"a delivery id with a space: {delivery_id!r}")
    return delivery_id
