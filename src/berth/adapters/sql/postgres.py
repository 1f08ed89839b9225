"""The Store port on PostgreSQL: for several berth replicas sharing one delivery log
(plumbing, migrations and the claim function in postgres_base, the delivery log's rows in
postgres_deliveries, reads and writes over all workspaces at once in postgres_fleet;
workspaces and restart records here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.postgres_base import (
    _CLAIM_LOCK_CLASS,
    _CLAIM_SQL,
    _QUERY_TIMEOUT,
    _insert,
)
from berth.adapters.sql.postgres_credentials import PostgresCredentials
from berth.adapters.sql.postgres_deliveries import PostgresDeliveries
from berth.adapters.sql.postgres_fleet import PostgresFleet
from berth.adapters.sql.postgres_lane import LANE_FUNCTIONS
from berth.domain.errors import Conflict, NotFound
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace

try:
    import asyncpg
except ImportError as e:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("PostgreSQL support needs asyncpg: pip install 'berth[postgres]'") from e

__all__ = ["_CLAIM_SQL", "PostgresStore"]


class PostgresStore(PostgresDeliveries, PostgresFleet, PostgresCredentials, rows.WorkspaceUpdates):
    _FUNCTIONS = (*PostgresDeliveries._FUNCTIONS, *LANE_FUNCTIONS)  # the fast lane's too

    # workspaces ------------------------------------------------------------
    async def create_workspace(self, ws: Workspace) -> None:
        sql, args = _insert("workspaces", rows.ws_params(ws))
        try:
            await self._execute(sql, *args)
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

    async def changed_workspaces(
        self, seen: Mapping[str, str]
    ) -> tuple[dict[str, str], list[tuple[Workspace, str]]] | None:
        """A row's version is its xmin: every write of it (an UPDATE writes a new row
        version) gives it a new one. Versions first, then only the rows not as `seen`."""
        versions = {
            r["id"]: r["v"] for r in await self._fetch("SELECT id, xmin::text AS v FROM workspaces")
        }
        stale = [i for i, v in versions.items() if seen.get(i) != v]
        if not stale:
            return versions, []
        got = await self._fetch(
            "SELECT xmin::text AS berth_version, * FROM workspaces WHERE id = ANY($1::text[])",
            stale,
        )
        return versions, [(rows.ws_from_row(r), r["berth_version"]) for r in got]

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
        sql = f"UPDATE workspaces SET {', '.join(sets)} WHERE {where} RETURNING *"
        if "state" in fields or "peer" in fields:
            # under the workspace's claim lock, as the fast lane's accepts are
            # (postgres_lane.py): a move out of `online`, or a deploy's peer, waits for a
            # lane flush that read the workspace before it, and the next flush sees it
            async def move(conn: Any) -> Any:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    _CLAIM_LOCK_CLASS,
                    ws_id,
                    timeout=_QUERY_TIMEOUT,
                )
                return await conn.fetchrow(sql, *args, timeout=_QUERY_TIMEOUT)

            row = await self._tx(move)
        else:
            row = await self._fetchrow(sql, *args)
        return None if row is None else rows.ws_from_row(row)

    async def delete_workspace(self, ws_id: str) -> None:
        await self._execute(
            "WITH beats AS (DELETE FROM heartbeats WHERE workspace_id = $1) "
            "DELETE FROM workspaces WHERE id = $1",
            ws_id,
        )

    # restarts --------------------------------------------------------------
    async def save_restart(self, r: RestartRecord) -> None:
        p = rows.r_params(r)
        updates = ", ".join(f"{k} = excluded.{k}" for k in p if k != "id")
        sql, args = _insert("restarts", p, f"ON CONFLICT (id) DO UPDATE SET {updates}")
        await self._execute(sql, *args)

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
