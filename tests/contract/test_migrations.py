"""The schema: what the migrations make, on every SQL dialect.

* A database upgraded one migration at a time (one `migrate()` per release) ends with
  exactly the schema of a fresh install.
* The schema is exactly what berth.adapters.sql.schema declares: every table with its
  columns, every index (partial ones still partial), nothing more; `migrate()` is
  idempotent and records each version once.
* On PostgreSQL, replicas migrating at the same time do not race, and the hot queries
  are served by the partial indexes, so finished deliveries do not slow them down.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from berth.adapters.sql import schema
from berth.adapters.sql.sqlite import SqliteStore
from tests.contract.conftest import fresh_schema

# Tables the stores keep for themselves, outside the declared schema.
_BOOKKEEPING = {"schema_migrations": {"version", "applied_at"}}


# what the schema module declares -----------------------------------------------
@dataclass
class Declared:
    tables: dict[str, set[str]] = field(default_factory=dict)  # table -> columns
    indexes: dict[str, str] = field(default_factory=dict)  # index -> table
    partial: set[str] = field(default_factory=set)  # indexes with a WHERE clause


_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)\s*\((.*)\)\s*$", re.S | re.I)
_CREATE_INDEX = re.compile(
    r"CREATE (?:UNIQUE )?INDEX (?:IF NOT EXISTS )?(\w+) ON (\w+)\s*\([^)]*\)(.*)$", re.S | re.I
)
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (?:IF NOT EXISTS )?(\w+)", re.I)
_DROP_INDEX = re.compile(r"DROP INDEX (?:IF EXISTS )?(\w+)", re.I)
_DROP_TABLE = re.compile(r"DROP TABLE (?:IF EXISTS )?(\w+)", re.I)
_RENAME_TABLE = re.compile(r"ALTER TABLE (\w+) RENAME TO (\w+)", re.I)
# statements that change no table's columns nor any index of the declaration
_NO_SHAPE = re.compile(
    r"(INSERT INTO |ALTER TABLE \w+ (DROP|ADD) CONSTRAINT |CREATE (FUNCTION|TRIGGER) )", re.I
)
_CONSTRAINT_WORDS = {"UNIQUE", "PRIMARY", "CONSTRAINT", "CHECK", "FOREIGN"}


def _columns(body: str) -> set[str]:
    """Column names of a CREATE TABLE body (table constraints skipped)."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = (p.split()[0] for p in parts if p.strip())
    return {n for n in names if n.upper() not in _CONSTRAINT_WORDS}


def declared(types: dict[str, str]) -> Declared:
    """Read the migration scripts; a statement this does not know fails the test."""
    out = Declared()
    for _, script in schema.migrations(types):
        for stmt in schema.statements(script):
            if m := _CREATE_TABLE.match(stmt):
                out.tables[m[1]] = _columns(m[2])
            elif m := _CREATE_INDEX.match(stmt):
                out.indexes[m[1]] = m[2]
                if "WHERE" in m[3].upper():
                    out.partial.add(m[1])
            elif m := _ADD_COLUMN.match(stmt):
                out.tables[m[1]].add(m[2])
            elif m := _DROP_INDEX.match(stmt):
                out.indexes.pop(m[1])
                out.partial.discard(m[1])
            elif m := _DROP_TABLE.match(stmt):
                out.tables.pop(m[1])
                for ix in [i for i, t in out.indexes.items() if t == m[1]]:
                    out.indexes.pop(ix)
                    out.partial.discard(ix)
            elif m := _RENAME_TABLE.match(stmt):
                out.tables[m[2]] = out.tables.pop(m[1])
                for ix, t in list(out.indexes.items()):
                    if t == m[1]:
                        out.indexes[ix] = m[2]
            elif _NO_SHAPE.match(stmt):
                pass
            else:
                pytest.fail(
                    f"test_migrations cannot read this migration statement; teach it: {stmt[:80]}"
                )
    return out


def test_declaration_is_read() -> None:
    """Guards the parser itself: an empty reading would make the schema tests vacuous."""
    for types in (schema.SQLITE, schema.POSTGRES):
        d = declared(types)
        assert {"workspaces", "deliveries", "restarts"} <= set(d.tables)
        assert {"seq", "status", "lease_owner", "lease_until", "not_before"} <= d.tables[
            "deliveries"
        ]
        assert {
            "deliveries_queued",
            "deliveries_in_flight",
            "deliveries_lease",
            "deliveries_finished",
        } <= d.partial
    assert declared(schema.SQLITE) == declared(schema.POSTGRES)  # the dialects are kept in step


def _versions() -> list[int]:
    versions = [v for v, _ in schema.migrations(schema.SQLITE)]
    assert versions == [v for v, _ in schema.migrations(schema.POSTGRES)]
    assert versions == sorted(set(versions)), "versions must be unique and increasing"
    return versions


def _only_first(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Make the schema module look as it did when migration number k was the newest."""
    full: Callable[[dict[str, str]], list[tuple[int, str]]] = schema.migrations
    monkeypatch.setattr(schema, "migrations", lambda types: full(types)[:k])


# SQLite ----------------------------------------------------------------------------
def _sqlite_schema(path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(path) as c:
        got = c.execute(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    return [(t, n, tb, " ".join(sql.split())) for t, n, tb, sql in got]


def _sqlite_columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as c:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}


async def _sqlite_migrate(path: Path) -> None:
    store = SqliteStore(str(path))
    try:
        await store.migrate()
    finally:
        await store.close()


async def test_sqlite_replayed_migrations_equal_fresh_install(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh, replayed = tmp_path / "fresh.db", tmp_path / "replayed.db"
    await _sqlite_migrate(fresh)
    with monkeypatch.context() as mp:
        for k in range(1, len(_versions()) + 1):
            _only_first(mp, k)
            await _sqlite_migrate(replayed)
    await _sqlite_migrate(replayed)  # and once more on the current code: nothing left to do
    assert _sqlite_schema(replayed) == _sqlite_schema(fresh)


async def test_sqlite_schema_is_the_declared_one(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    await _sqlite_migrate(path)
    first = _sqlite_schema(path)
    await _sqlite_migrate(path)  # idempotent
    assert _sqlite_schema(path) == first
    with sqlite3.connect(path) as c:
        assert [
            r[0] for r in c.execute("SELECT version FROM schema_migrations ORDER BY version")
        ] == _versions()
    want = declared(schema.SQLITE)
    tables = {n for t, n, _, _ in first if t == "table" and not n.startswith("sqlite_")}
    assert tables == set(want.tables) | set(_BOOKKEEPING)
    for table, columns in {**want.tables, **_BOOKKEEPING}.items():
        assert _sqlite_columns(path, table) == columns, table
    indexes = {
        n: (tb, sql)
        for t, n, tb, sql in first
        if t == "index" and not n.startswith("sqlite_autoindex")
    }
    assert {n: tb for n, (tb, _) in indexes.items()} == want.indexes
    assert {n for n, (_, sql) in indexes.items() if " WHERE " in sql.upper()} == want.partial


# PostgreSQL --------------------------------------------------------------------------
async def _pg_migrate(url: str) -> None:
    from berth.adapters.sql.postgres import PostgresStore

    store = PostgresStore(url, min_size=1, max_size=1)
    try:
        await store.migrate()
    finally:
        await store.close()


async def _pg_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _pg_schema(url: str) -> dict[str, Any]:
    """Columns (with types, defaults, nullability) and index definitions of the store's schema."""
    here = (await _pg_fetch(url, "SELECT current_schema()"))[0][0]
    columns = await _pg_fetch(
        url,
        "SELECT table_name, column_name, data_type, column_default, is_nullable, ordinal_position "
        "FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
        here,
    )
    indexes = await _pg_fetch(
        url,
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        here,
    )
    return {
        "columns": [tuple(r) for r in columns],
        # the definitions name the schema, which differs between the two installs
        "indexes": [(r[0], r[1], r[2].replace(f"{here}.", "")) for r in indexes],
    }


@pytest.mark.postgres
async def test_postgres_replayed_migrations_equal_fresh_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fresh_schema() as fresh, fresh_schema() as replayed:
        await _pg_migrate(fresh)
        with monkeypatch.context() as mp:
            for k in range(1, len(_versions()) + 1):
                _only_first(mp, k)
                await _pg_migrate(replayed)
        await _pg_migrate(replayed)
        got, want = await _pg_schema(replayed), await _pg_schema(fresh)
        assert got["columns"] == want["columns"]
        assert got["indexes"] == want["indexes"]


@pytest.mark.postgres
async def test_postgres_schema_is_the_declared_one(pg_empty_url: str) -> None:
    url = pg_empty_url
    await _pg_migrate(url)
    first = await _pg_schema(url)
    await _pg_migrate(url)  # idempotent
    assert await _pg_schema(url) == first
    versions = await _pg_fetch(url, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in versions] == _versions()
    want = declared(schema.POSTGRES)
    columns: dict[str, set[str]] = {}
    for table, column, *_ in first["columns"]:
        columns.setdefault(table, set()).add(column)
    assert columns == {**want.tables, **_BOOKKEEPING}
    # Constraint indexes (primary keys, UNIQUE) are named by PostgreSQL: leave them out.
    named = {n: (t, d) for t, n, d in first["indexes"] if not n.endswith(("_pkey", "_key"))}
    assert {n: t for n, (t, _) in named.items()} == want.indexes
    assert {n for n, (_, d) in named.items() if " WHERE " in d} == want.partial


@pytest.mark.postgres
async def test_postgres_replicas_migrating_together_do_not_race(pg_empty_url: str) -> None:
    await asyncio.gather(*(_pg_migrate(pg_empty_url) for _ in range(4)))
    versions = await _pg_fetch(
        pg_empty_url, "SELECT version FROM schema_migrations ORDER BY version"
    )
    assert [r[0] for r in versions] == _versions()


@pytest.mark.postgres
async def test_postgres_hot_queries_use_partial_indexes(pg_empty_url: str) -> None:
    """With many finished deliveries, the claim and the in-flight count read only live rows."""
    from berth.adapters.sql.postgres import _CLAIM_SQL

    url = pg_empty_url
    await _pg_migrate(url)
    await _pg_fetch(
        url,
        """
        INSERT INTO deliveries (id, workspace_id, message_id, method, request, status, created_at,
                                updated_at, finished_at)
        SELECT 'd' || i, 'w' || (i % 5), 'm' || i, 'message/send', '\\x00', 'done', 0, 0, 0
        FROM generate_series(1, 20000) AS i""",
    )
    await _pg_fetch(
        url,
        """
        INSERT INTO deliveries (id, workspace_id, message_id, method, request, status, created_at, updated_at)
        SELECT 'q' || i, 'w1', 'q' || i, 'message/send', '\\x00', 'queued', 0, 0
        FROM generate_series(1, 3) AS i""",
    )
    await _pg_fetch(url, "ANALYZE deliveries")

    async def plan(sql: str, *args: Any) -> str:
        return "\n".join(r[0] for r in await _pg_fetch(url, "EXPLAIN " + sql, *args))

    claim = await plan(_CLAIM_SQL, "w1", 1.0, 10, "me", 2.0)
    assert "deliveries_queued" in claim and "Seq Scan" not in claim, claim
    for sql, arg in [
        ("SELECT count(*) FROM deliveries WHERE workspace_id = $1 AND status = 'in_flight'", "w1"),
        ("SELECT id FROM deliveries WHERE status = 'in_flight' AND lease_until < $1", 5.0),
        (
            "SELECT min(not_before) FROM deliveries WHERE workspace_id = $1 AND status = 'queued'",
            "w1",
        ),
    ]:
        got = await plan(sql, arg)
        assert any(i in got for i in _LIVE_INDEXES) and "Seq Scan" not in got, got


# Partial indexes over the statuses a delivery can leave: they stay as small as the live work.
_LIVE_INDEXES = ("deliveries_queued", "deliveries_in_flight", "deliveries_lease")
