"""Credentials and run tokens on SQLite (the CredentialStore port): only
hashes of secrets are stored (see berth.domain.credentials)."""

from __future__ import annotations

import sqlite3
from typing import Any

from berth.adapters.sql import rows
from berth.adapters.sql.sqlite_base import SqliteBase
from berth.domain.credentials import Credential
from berth.domain.errors import Conflict, NotFound
from berth.domain.workspace import Workspace

__all__ = ["SqliteCredentials"]

_UPDATABLE = ("secret_hash", "rotated_at", "revoked_at")


def _exists(cred: Credential) -> Conflict:
    return Conflict(f"a credential {cred.subject!r} exists", code="credential_exists")


def _missing(ref: str) -> NotFound:
    return NotFound(f"no credential {ref!r}", code="credential_not_found")


def _check(fields: dict[str, Any]) -> None:
    for k in fields:
        if k not in _UPDATABLE:
            raise AttributeError(k)


class SqliteCredentials(SqliteBase):
    async def workspace_by_run_token(self, token_hash: str) -> Workspace | None:
        def go(c: sqlite3.Connection) -> Workspace | None:
            row = c.execute(
                "SELECT * FROM workspaces WHERE run_token_hash = ? OR peer_run_token_hash = ?"
                " LIMIT 1",
                (token_hash, token_hash),
            ).fetchone()
            return None if row is None else rows.ws_from_row(row)

        return await self._hot(go, write=False)

    async def add_credential(self, cred: Credential) -> None:
        p = rows.c_params(cred)
        sql = f"INSERT INTO credentials ({', '.join(p)}) VALUES ({', '.join(':' + k for k in p)})"

        def go(c: sqlite3.Connection) -> None:
            try:
                c.execute(sql, p)
            except sqlite3.IntegrityError:
                raise _exists(cred) from None

        await self._run(go)

    async def credential_by_secret(self, secret_hash: str) -> Credential | None:
        def go(c: sqlite3.Connection) -> Credential | None:
            row = c.execute(
                "SELECT * FROM credentials WHERE secret_hash = ?", (secret_hash,)
            ).fetchone()
            return None if row is None else rows.c_from_row(row)

        return await self._hot(go, write=False)

    async def get_credential(self, ref: str) -> Credential:
        def go(c: sqlite3.Connection) -> Credential:
            row = c.execute(
                "SELECT * FROM credentials WHERE id = ? OR subject = ? LIMIT 1", (ref, ref)
            ).fetchone()
            if row is None:
                raise _missing(ref)
            return rows.c_from_row(row)

        return await self._run(go, write=False)

    async def list_credentials(self) -> list[Credential]:
        return await self._run(
            lambda c: [
                rows.c_from_row(r)
                for r in c.execute("SELECT * FROM credentials ORDER BY created_at, id")
            ],
            write=False,
        )

    async def update_credential(self, cred_id: str, **fields: Any) -> Credential:
        _check(fields)
        sets = ", ".join(f"{k} = :{k}" for k in fields)

        def go(c: sqlite3.Connection) -> Credential:
            row = c.execute(
                f"UPDATE credentials SET {sets} WHERE id = :_id RETURNING *",
                {**fields, "_id": cred_id},
            ).fetchone()
            if row is None:
                raise _missing(cred_id)
            return rows.c_from_row(row)

        return await self._run(go)

    async def delete_credentials(self, workspace_id: str) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM credentials WHERE workspace_id = ?", (workspace_id,))
        )

    async def credentials_version(self) -> int | None:
        return None  # one berth process writes a SQLite database: its own writes are all
