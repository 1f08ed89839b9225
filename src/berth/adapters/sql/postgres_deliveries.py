"""The delivery log's rows on PostgreSQL (the DeliveryStore port).

accept, claim, accept_claim and settle go through group commit (berth.adapters.sql.group_commit):
concurrent calls share one transaction, a statement per kind (postgres_batch); a lone call
runs the single-item statement below."""

from __future__ import annotations

from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.group_commit import GroupCommit
from berth.adapters.sql.postgres_base import _by_seq, _insert, _rowcount
from berth.adapters.sql.postgres_batch import (
    AcceptClaimCall,
    ClaimCall,
    PostgresBatches,
    SettleCall,
    Write,
    write_key,
)
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus
from berth.domain.errors import NotFound
from berth.ports import Settle

D = DeliveryStatus
__all__ = ["PostgresDeliveries"]


class PostgresDeliveries(PostgresBatches):
    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 20, group_commit: bool = True
    ) -> None:
        super().__init__(url, min_size=min_size, max_size=max_size)
        self.writes: GroupCommit[Write, Any] = GroupCommit(
            self._write_many,
            self._write_one,
            key=write_key,
            max_batch=256 if group_commit else 1,  # 1: every call alone (for comparison)
            lanes=2,  # a flush is prepared and answered while the other one runs in the database
        )

    async def close(self) -> None:
        await self.writes.idle()
        await super().close()

    # deliveries ------------------------------------------------------------
    async def accept(self, d: Delivery) -> tuple[Delivery, bool]:
        got: tuple[Delivery, bool] = await self.writes(d)
        return got

    async def _accept_one(self, d: Delivery) -> tuple[Delivery, bool]:
        sql, args = _insert(
            "deliveries",
            rows.d_params(d),
            "ON CONFLICT (workspace_id, caller, message_id) DO NOTHING RETURNING *",
        )

        # One autocommit statement in the common case (the hot path: one round trip).
        row = await self._fetchrow(sql, *args)
        if row is not None:
            return rows.d_from_row(row), True
        # The conflicting row is committed (ON CONFLICT waited for it), so this sees it.
        row = await self._fetchrow(
            "SELECT * FROM deliveries WHERE workspace_id = $1 AND caller = $2 AND message_id = $3",
            d.workspace_id,
            d.caller,
            d.message_id,
        )
        return rows.d_from_row(row), False

    async def get_delivery(self, delivery_id: str) -> Delivery:
        row = await self._fetchrow("SELECT * FROM deliveries WHERE id = $1", delivery_id)
        if row is None:
            raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
        return rows.d_from_row(row)

    async def find_delivery(
        self, workspace_id: str, message_id: str, caller: str | None = None
    ) -> Delivery | None:
        row = await self._fetchrow(
            "SELECT * FROM deliveries WHERE workspace_id = $1 AND message_id = $2 "
            "AND ($3::text IS NULL OR caller = $3) ORDER BY seq LIMIT 1",
            workspace_id,
            message_id,
            caller,
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
        got: list[Delivery] = await self.writes(
            ClaimCall(workspace_id, capacity, owner, float(now), float(now + lease_seconds))
        )
        return got

    async def _claim_one(self, c: ClaimCall) -> list[Delivery]:
        # One round trip, also when there is nothing to claim (see _CLAIM_FUNCTION).
        got = await self._fetch(
            "SELECT * FROM berth_claim($1, $2, $3, $4, $5)",
            c.workspace_id,
            c.capacity,
            c.owner,
            c.now,
            c.until,
        )
        return _by_seq(got)

    async def accept_claim(
        self,
        d: Delivery,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> tuple[Delivery, bool, list[Delivery]]:
        """accept, then (when it created the delivery) claim, in one statement and one
        commit (berth_write): the proxy's message to an idle workspace waits for one commit
        before it is forwarded, not two."""
        claim = ClaimCall(d.workspace_id, capacity, owner, float(now), float(now + lease_seconds))
        got: tuple[Delivery, bool, list[Delivery]] = await self.writes(AcceptClaimCall(d, claim))
        return got

    async def renew(self, owner: str, ids: list[str], lease_until: float) -> int:
        if not ids:
            return 0
        status = await self._execute(
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
        got: Delivery | None = await self.writes(SettleCall(delivery_id, owner, how, now))
        return got

    async def _settle_one(self, c: SettleCall) -> Delivery | None:
        how, now = c.how, c.now
        args: list[Any] = [
            c.delivery_id,
            c.owner,
            how.status.value,
            int(how.count_attempt),
            how.reason,
            float(how.not_before),
            float(now),
            float(now) if how.status in FINAL else None,
            how.forward,
        ]
        sets = (
            "status = $3, attempts = attempts + $4, reason = $5, not_before = $6, "
            "lease_owner = NULL, lease_until = NULL, updated_at = $7, finished_at = $8"
        )
        if how.reply is not None:
            args += [how.reply, how.reply_status, how.reply_type]
            sets += ", reply = $10, reply_status = $11, reply_type = $12"
        row = await self._fetchrow(
            f"UPDATE deliveries SET {sets} WHERE id = $1 AND status = '{rows.IN_FLIGHT}' "
            "AND lease_owner = $2 AND ($9::int IS NULL OR forwards = $9) RETURNING *",
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

    async def release_leases(self, owner: str) -> list[Delivery]:
        got = await self._fetch(
            f"UPDATE deliveries SET status = '{rows.QUEUED}', lease_owner = NULL, lease_until = NULL, "
            "reason = 'released by a stopping replica: redelivered' "
            f"WHERE status = '{rows.IN_FLIGHT}' AND lease_owner = $1 RETURNING *",
            owner,
        )
        return _by_seq(got)

    async def take_lease(self, delivery_id: str, from_owner: str, to_owner: str) -> Delivery | None:
        row = await self._fetchrow(
            f"UPDATE deliveries SET lease_owner = $3 WHERE id = $1 AND status = '{rows.IN_FLIGHT}' "
            "AND lease_owner = $2 RETURNING *",
            delivery_id,
            from_owner,
            to_owner,
        )
        return None if row is None else rows.d_from_row(row)

    async def leased(self, workspace_id: str, owner: str) -> list[str]:
        got = await self._fetch(
            f"SELECT id FROM deliveries WHERE workspace_id = $1 AND status = '{rows.IN_FLIGHT}' "
            "AND lease_owner = $2 ORDER BY seq",
            workspace_id,
            owner,
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

    async def queue_head(self, workspace_id: str) -> float | None:
        row = await self._fetchrow(
            "SELECT created_at FROM deliveries "
            f"WHERE workspace_id = $1 AND status = '{rows.QUEUED}' ORDER BY seq LIMIT 1",
            workspace_id,
        )
        return None if row is None else float(row["created_at"])

    async def prune_finished(self, before: float) -> int:
        status = await self._execute(
            f"DELETE FROM deliveries WHERE status IN {rows.sql_set(FINAL)} AND finished_at < $1",
            float(before),
        )
        return _rowcount(status)
