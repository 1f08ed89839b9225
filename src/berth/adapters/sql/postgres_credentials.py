"""Credentials and run tokens on PostgreSQL (the CredentialStore port)."""

from __future__ import annotations

from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.credentials import _check, _exists, _missing
from berth.adapters.sql.postgres_base import PostgresBase, _insert
from berth.domain.credentials import Credential
from berth.domain.workspace import Workspace

__all__ = ["PostgresCredentials"]


class PostgresCredentials(PostgresBase):
    async def workspace_by_run_token(self, token_hash: str) -> Workspace | None:
        row = await self._fetchrow(
            "SELECT * FROM workspaces WHERE run_token_hash = $1 OR peer_run_token_hash = $1"
            " LIMIT 1",
            token_hash,
        )
        return None if row is None else rows.ws_from_row(row)

    async def add_credential(self, cred: Credential) -> None:
        import asyncpg

        sql, args = _insert("credentials", rows.c_params(cred))
        try:
            await self._execute(sql, *args)  # unreachable: StoreUnavailable, as elsewhere
        except asyncpg.UniqueViolationError:
            raise _exists(cred) from None

    async def credential_by_secret(self, secret_hash: str) -> Credential | None:
        row = await self._fetchrow("SELECT * FROM credentials WHERE secret_hash = $1", secret_hash)
        return None if row is None else rows.c_from_row(row)

    async def get_credential(self, ref: str) -> Credential:
        row = await self._fetchrow(
            "SELECT * FROM credentials WHERE id = $1 OR subject = $1 ORDER BY id = $1 DESC LIMIT 1",
            ref,
        )
        if row is None:
            raise _missing(ref)
        return rows.c_from_row(row)

    async def list_credentials(self) -> list[Credential]:
        got = await self._fetch("SELECT * FROM credentials ORDER BY created_at, id")
        return [rows.c_from_row(r) for r in got]

    async def update_credential(self, cred_id: str, **fields: Any) -> Credential:
        _check(fields)
        args: list[Any] = [cred_id, *fields.values()]
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(fields, start=2))
        row = await self._fetchrow(
            f"UPDATE credentials SET {sets} WHERE id = $1 RETURNING *", *args
        )
        if row is None:
            raise _missing(cred_id)
        return rows.c_from_row(row)

    async def delete_credentials(self, workspace_id: str) -> None:
        await self._execute("DELETE FROM credentials WHERE workspace_id = $1", workspace_id)

    async def credentials_version(self) -> int | None:
        row = await self._fetchrow("SELECT n FROM berth_counters WHERE name = 'credentials'")
        if row is None:
            raise RuntimeError("berth_counters has no 'credentials' row (schema migration 5)")
        return int(row["n"])
