"""One `store` fixture per Store adapter, so every contract test runs against each of them.

PostgreSQL tests get a fresh, empty schema each, in one database made for the test
session (lazily, so memory and SQLite runs never need a server); the store migrates it
as bootstrap would, so every test also exercises `migrate()`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

from berth.adapters.memory_store import MemoryStore
from berth.adapters.sql.sqlite import SqliteStore
from berth.ports import Store
from tests.services import require_postgres

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def with_schema(url: str, schema: str) -> str:
    """The URL with a search_path: asyncpg passes unknown query parameters as server settings."""
    return urlunsplit(urlsplit(url)._replace(query=urlencode({"search_path": schema})))


async def _execute(url: str, *statements: str) -> None:
    """Run statements on a short-lived connection (CREATE DATABASE cannot run in a pool's tx)."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


_SESSION_DB: dict[str, str] = {}  # server URL -> URL of this test session's own database


async def session_database(admin: str) -> str:
    """A database of this test session's own, made on first use and dropped at the end."""
    if admin not in _SESSION_DB:
        name = f"berth_t_{uuid.uuid4().hex[:12]}"
        await _execute(admin, f"CREATE DATABASE {name}")
        _SESSION_DB[admin] = with_database(admin, name)
    return _SESSION_DB[admin]


@pytest.fixture(scope="session", autouse=True)
def _drop_session_databases() -> Iterator[None]:
    """Drop what session_database made (no event loop runs at session teardown)."""
    yield
    for admin, url in _SESSION_DB.items():
        name = urlsplit(url).path.lstrip("/")
        asyncio.run(_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    _SESSION_DB.clear()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A URL whose search_path is a new, empty schema, dropped afterwards.

    Each test gets a schema of its own rather than a database of its own: the isolation
    is the same for the store (every name it uses is unqualified), and CREATE SCHEMA
    takes milliseconds where CREATE DATABASE takes a few hundred (it copies and fsyncs).
    """
    db = await session_database(require_postgres())
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _execute(db, f"CREATE SCHEMA {name}")
    try:
        yield with_schema(db, name)
    finally:
        await _execute(db, f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
async def pg_empty_url() -> AsyncIterator[str]:
    """A fresh, empty schema (for the migration tests)."""
    async with fresh_schema() as url:
        yield url


@dataclass
class Backend:
    """One adapter under test; `open` gives another store on the same database.

    The concurrency tests use several stores to stand in for several berth replicas.
    For the in-memory adapter "the same database" can only be the same instance.
    """

    name: str
    factory: Callable[[], Awaitable[Store]]
    opened: list[Store] = field(default_factory=list)

    async def open(self) -> Store:
        store = await self.factory()
        if store not in self.opened:
            self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.opened):
            await store.close()
        self.opened.clear()


async def _migrated(store: Store) -> Store:
    await store.migrate()
    return store


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name: str = request.param
    async with AsyncExitStack() as stack:
        if name == "memory":
            shared = MemoryStore()
            b = Backend(name, lambda: _migrated(shared))
        elif name == "sqlite":
            path = str(tmp_path / "berth.db")
            b = Backend(name, lambda: _migrated(SqliteStore(path)))
        else:
            from berth.adapters.sql.postgres import PostgresStore

            url = await stack.enter_async_context(fresh_schema())
            b = Backend(name, lambda: _migrated(PostgresStore(url, min_size=1, max_size=4)))
        stack.push_async_callback(b.close_all)  # before the schema goes
        yield b


@pytest.fixture
async def store(backend: Backend) -> Store:
    """The Store under test (closed by `backend`)."""
    return await backend.open()
