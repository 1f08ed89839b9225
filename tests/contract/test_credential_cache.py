"""The count of credential writes each store keeps (migration 5), and the credential cache
of two replicas on one PostgreSQL database: a rotation or revocation on one is honoured by
the other from the moment it answers (services/credential_cache.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from berth.adapters.memory_store import MemoryStore
from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.credentials import Credential, Role, hash_secret
from berth.ports import Store
from berth.services.access import Access
from berth.services.credential_cache import CredentialCache
from tests.contract.conftest import _execute, fresh_schema

T0 = 1_700_000_000.0


def cred(secret_hash: str, workspace_id: str | None = None) -> Credential:
    return Credential(
        id=uuid.uuid4().hex,
        subject=f"caller:{secret_hash}",
        role=Role.CALLER,
        secret_hash=secret_hash,
        created_at=T0,
        workspace_id=workspace_id,
    )


async def _writes(store: Store) -> list[int | None]:
    """The store's count before and after each kind of credential write."""
    a, b = cred("h-a", "w1"), cred("h-b", "w1")
    seen = [await store.credentials_version()]
    await store.add_credential(a)
    seen.append(await store.credentials_version())
    await store.update_credential(a.id, secret_hash="h-a2", rotated_at=T0 + 1)
    seen.append(await store.credentials_version())
    await store.update_credential(a.id, revoked_at=T0 + 2)
    seen.append(await store.credentials_version())
    await store.add_credential(b)
    await store.delete_credentials("w1")  # both rows in one statement
    seen.append(await store.credentials_version())
    return seen


async def test_every_credential_write_moves_the_count(store: Store) -> None:
    seen = await _writes(store)
    if isinstance(store, (MemoryStore, SqliteStore)):
        assert seen == [None] * 5  # one writer: nobody asks
    else:
        assert all(isinstance(v, int) for v in seen)
        assert seen == sorted(seen) and len(set(seen)) == 5, seen


async def test_sqlite_counts_too_for_whoever_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "berth.db"
    store = SqliteStore(str(path))
    await store.migrate()
    try:
        await _writes(store)
    finally:
        await store.close()
    with sqlite3.connect(path) as c:
        (n,) = c.execute("SELECT n FROM berth_counters WHERE name = 'credentials'").fetchone()
    assert n == 6  # add, rotate, revoke, add, and the delete of two rows (per row here)


@pytest.fixture
async def two_replicas() -> AsyncIterator[tuple[Store, Store, str]]:
    from berth.adapters.sql.postgres import PostgresStore

    async with fresh_schema() as url:
        a, b = (
            PostgresStore(url, min_size=1, max_size=2),
            PostgresStore(url, min_size=1, max_size=2),
        )
        await a.migrate()
        await b.migrate()
        try:
            yield a, b, url
        finally:
            await a.close()
            await b.close()


@pytest.mark.postgres
async def test_a_revocation_is_honoured_by_the_other_replica_once_it_answers(
    two_replicas: tuple[Store, Store, str],
) -> None:
    a, b, _ = two_replicas
    here, there = CredentialCache(a, check_seconds=0.3), CredentialCache(b, check_seconds=0.3)
    c = cred("h-c")
    await a.add_credential(c)
    assert await there.get("h-c") == c  # kept there
    assert await there.get("h-c") == c
    assert there.reads == 1
    # revoked here, as Access.revoke does it: the write, then settled before answering
    await a.update_credential(c.id, revoked_at=T0 + 1)
    await here.settled()
    got = await there.get("h-c")
    assert got is not None and not got.active
    # rotated: the old secret refused there, the new one taken
    d = cred("h-d")
    await a.add_credential(d)
    assert await there.get("h-d") == d
    await a.update_credential(d.id, secret_hash="h-d2", rotated_at=T0 + 2)
    await here.settled()
    assert await there.get("h-d") is None
    new = await there.get("h-d2")
    assert new is not None and new.active


@pytest.mark.postgres
async def test_a_write_made_outside_berth_is_seen_within_check_seconds(
    two_replicas: tuple[Store, Store, str],
) -> None:
    """The trigger counts whoever writes (an operator's SQL, a replica of an older berth)."""
    a, _, url = two_replicas
    cache = CredentialCache(a, check_seconds=0.3)
    c = cred("h-e")
    await a.add_credential(c)
    assert await cache.get("h-e") == c
    await _execute(url, f"UPDATE credentials SET revoked_at = {T0 + 5} WHERE id = '{c.id}'")
    assert await cache.get("h-e") == c  # within check_seconds of the last check
    await asyncio.sleep(0.35)
    got = await cache.get("h-e")
    assert got is not None and not got.active
    await _execute(url, "TRUNCATE credentials")
    await asyncio.sleep(0.35)
    assert await cache.get("h-e") is None


@pytest.mark.postgres
async def test_a_second_revocation_answers_no_sooner_than_the_first() -> None:
    """A revocation asked again (a client's retry, another operator) while the first waits:
    it answers only once no replica takes the secret either (found by a review)."""
    from berth.adapters.sql.postgres import PostgresStore

    async with fresh_schema() as url:
        stores = [PostgresStore(url, min_size=1, max_size=2) for _ in range(3)]
        for st in stores:
            await st.migrate()
        try:
            a, b, c = (
                Access(st, st, None, None, None, admin_token="adm", cache_check_seconds=1.0)  # type: ignore[arg-type]
                for st in stores
            )
            secret = "bwc_a_secret_revoked_twice"
            cr = cred(hash_secret(secret))
            await stores[0].add_credential(cr)
            assert await b.cache.get(hash_secret(secret)) == cr  # replica b keeps it
            first = asyncio.create_task(a.revoke(cr.id))
            await asyncio.sleep(0.1)
            assert (await c.revoke(cr.id))["status"] == "revoked"  # answered: b must refuse
            got = await b.cache.get(hash_secret(secret))
            assert got is not None and not got.active
            await first
        finally:
            for st in stores:
                await st.close()
