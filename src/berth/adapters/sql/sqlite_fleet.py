"""Reads and writes over every workspace at once on SQLite: one statement for all of them
instead of one per workspace (lists and /metrics of many workspaces, heartbeat flushes)."""

from __future__ import annotations

import sqlite3

from berth.adapters.sql import rows
from berth.adapters.sql.sqlite_base import SqliteBase
from berth.ports import Pending

__all__ = ["SqliteFleet"]

# Through the partial indexes, like `pending` and `queue_head`. In an aggregate with min(),
# SQLite takes a bare column (created_at) from the row holding the minimum (the head).
_BACKLOGS = (
    "SELECT workspace_id, count(*), 0, min(seq), created_at "
    "FROM deliveries INDEXED BY deliveries_queued "
    f"WHERE status = '{rows.QUEUED}' GROUP BY workspace_id "
    "UNION ALL "
    "SELECT workspace_id, 0, count(*), NULL, NULL "
    "FROM deliveries INDEXED BY deliveries_in_flight "
    f"WHERE status = '{rows.IN_FLIGHT}' GROUP BY workspace_id"
)


class SqliteFleet(SqliteBase):
    async def backlogs(self) -> dict[str, Pending]:
        def go(c: sqlite3.Connection) -> dict[str, Pending]:
            out: dict[str, Pending] = {}
            for ws_id, queued, in_flight, _, head in c.execute(_BACKLOGS):
                p = out.get(ws_id)
                if p is None:
                    out[ws_id] = Pending(queued, in_flight, head)
                else:
                    out[ws_id] = Pending(
                        p.queued + queued, p.in_flight + in_flight, p.head if head is None else head
                    )
            return out

        return await self._run(go, write=False)

    async def record_heartbeats(self, beats: dict[str, float]) -> None:
        if not beats:
            return
        # in a table of their own: the workspaces' rows stay as they are
        await self._run(
            lambda c: c.executemany(
                "INSERT INTO heartbeats (workspace_id, at) "
                "SELECT id, ? FROM workspaces WHERE id = ? "
                "ON CONFLICT (workspace_id) DO UPDATE SET at = max(at, excluded.at)",
                [(at, ws_id) for ws_id, at in beats.items()],
            )
        )

    async def last_heartbeats(self) -> dict[str, float]:
        def go(c: sqlite3.Connection) -> dict[str, float]:
            return {ws_id: float(at) for ws_id, at in c.execute(_LAST_HEARTBEATS)}

        return await self._run(go, write=False)


# the later of the beat a workspace's row was written with and the last one flushed
_LAST_HEARTBEATS = (
    "SELECT w.id, max(coalesce(w.last_heartbeat, h.at), coalesce(h.at, w.last_heartbeat)) "
    "FROM workspaces w LEFT JOIN heartbeats h ON h.workspace_id = w.id "
    "WHERE w.last_heartbeat IS NOT NULL OR h.at IS NOT NULL"
)
