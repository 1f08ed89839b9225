"""Reads and writes over every workspace at once on PostgreSQL: one statement for all of
them instead of one per workspace (lists and /metrics of many workspaces, heartbeat flushes)."""

from __future__ import annotations

from berth.adapters.sql import rows
from berth.adapters.sql.postgres_base import PostgresBase
from berth.ports import Pending

__all__ = ["PostgresFleet"]

_BACKLOGS = (
    "SELECT workspace_id, "
    f"count(*) FILTER (WHERE status = '{rows.QUEUED}') AS q, "
    f"count(*) FILTER (WHERE status = '{rows.IN_FLIGHT}') AS f, "
    f"(array_agg(created_at ORDER BY seq) FILTER (WHERE status = '{rows.QUEUED}'))[1] AS head "
    f"FROM deliveries WHERE status IN ('{rows.QUEUED}', '{rows.IN_FLIGHT}') "
    "GROUP BY workspace_id"
)


class PostgresFleet(PostgresBase):
    async def backlogs(self) -> dict[str, Pending]:
        return {
            r["workspace_id"]: Pending(
                int(r["q"]), int(r["f"]), None if r["head"] is None else float(r["head"])
            )
            for r in await self._fetch(_BACKLOGS)
        }

    async def record_heartbeats(self, beats: dict[str, float]) -> None:
        if not beats:
            return
        ids, ats = list(beats), [float(v) for v in beats.values()]
        # in a table of their own: the workspaces' rows (and their versions) stay as they are
        await self._tx(
            lambda conn: conn.execute(
                "INSERT INTO heartbeats (workspace_id, at) "
                "SELECT b.id, b.at FROM unnest($1::text[], $2::float8[]) AS b(id, at) "
                "JOIN workspaces w ON w.id = b.id "
                # rows in one order in every replica's flush: two flushes of the same
                # workspaces in different orders would deadlock
                "ORDER BY b.id "
                "ON CONFLICT (workspace_id) DO UPDATE "
                "SET at = GREATEST(heartbeats.at, excluded.at)",
                ids,
                ats,
            )
        )

    async def last_heartbeats(self) -> dict[str, float]:
        # the later of the beat a workspace's row was written with and the last one flushed
        got = await self._fetch(
            "SELECT w.id, GREATEST(w.last_heartbeat, h.at) AS at "
            "FROM workspaces w LEFT JOIN heartbeats h ON h.workspace_id = w.id "
            "WHERE w.last_heartbeat IS NOT NULL OR h.at IS NOT NULL"
        )
        return {r["id"]: float(r["at"]) for r in got}
