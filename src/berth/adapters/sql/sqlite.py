"""The Store port on SQLite: the embedded default (plumbing in sqlite_base, the delivery
log's rows in sqlite_deliveries, reads and writes over all workspaces at once in
sqlite_fleet; workspaces and restart records here)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.credentials import SqliteCredentials
from berth.adapters.sql.sqlite_deliveries import SqliteDeliveries
from berth.adapters.sql.sqlite_fleet import SqliteFleet
from berth.domain.errors import Conflict, NotFound
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace

__all__ = ["SqliteStore"]


class SqliteStore(SqliteDeliveries, SqliteFleet, SqliteCredentials, rows.WorkspaceUpdates):
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

    async def changed_workspaces(
        self, seen: Mapping[str, str]
    ) -> tuple[dict[str, str], list[tuple[Workspace, str]]] | None:
        return None  # no row versions: one berth owns a SQLite database, its roster is whole

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
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        params = {k: rows.ws_value(k, v) for k, v in fields.items()}
        params["_id"] = ws_id
        where = "id = :_id"
        if only_from is not None:
            where += f" AND state IN {rows.sql_set(only_from)}"

        def go(c: sqlite3.Connection) -> Workspace | None:
            row = c.execute(
                f"UPDATE workspaces SET {sets} WHERE {where} RETURNING *", params
            ).fetchone()
            return None if row is None else rows.ws_from_row(row)

        return await self._run(go)

    async def delete_workspace(self, ws_id: str) -> None:
        def go(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM heartbeats WHERE workspace_id = ?", (ws_id,))
            c.execute("DELETE FROM workspaces WHERE id = ?", (ws_id,))

        await self._run(go)

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
                f"SELECT * FROM restarts WHERE workspace_id = ? AND phase NOT IN {rows.RESTART_FINISHED} "
                "ORDER BY created_at DESC LIMIT 1",
                (workspace_id,),
            ).fetchone()
            return None if row is None else rows.r_from_row(row)

        return await self._run(go, write=False)
