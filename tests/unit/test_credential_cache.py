"""The credential cache (services/credential_cache.py): what it keeps, when it reads the
store again, and how long a change made elsewhere can go unseen. The same on PostgreSQL
with two replicas: tests/contract/test_credential_cache.py."""

from __future__ import annotations

import asyncio
import uuid

from berth.adapters.memory_store import MemoryStore
from berth.domain.credentials import Credential, Role
from berth.services.credential_cache import CredentialCache

T0 = 1_700_000_000.0


def cred(secret_hash: str, role: Role = Role.CALLER) -> Credential:
    return Credential(
        id=uuid.uuid4().hex,
        subject=f"caller:{secret_hash}",
        role=role,
        secret_hash=secret_hash,
        created_at=T0,
    )


class Counting(MemoryStore):
    """A memory store that counts its credential reads; `version` None: the only writer,
    else the count another replica's writes move (as PostgreSQL's trigger does)."""

    def __init__(self, version: int | None = None) -> None:
        super().__init__()
        self.version = version
        self.reads = 0
        self.version_reads = 0
        self.hold: asyncio.Event | None = None  # a credential read waits for it when set

    async def credential_by_secret(self, secret_hash: str) -> Credential | None:
        self.reads += 1
        got = await super().credential_by_secret(secret_hash)
        if self.hold is not None:
            await self.hold.wait()
        return got

    async def credentials_version(self) -> int | None:
        self.version_reads += 1
        await asyncio.sleep(0)
        return self.version


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_active_credential_is_read_once_then_kept() -> None:
    store = Counting()
    a = cred("h-a")
    await store.add_credential(a)
    cache = CredentialCache(store)
    assert await cache.get("h-a") == a
    for _ in range(5):
        assert await cache.get("h-a") == a
    assert store.reads == 1
    assert store.version_reads == 1  # once, to learn that this process is the only writer


async def test_unknown_and_revoked_secrets_are_read_every_time() -> None:
    store = Counting()
    r = cred("h-r")
    await store.add_credential(r)
    await store.update_credential(r.id, revoked_at=T0 + 1)
    cache = CredentialCache(store)
    for _ in range(3):
        assert await cache.get("h-nobody") is None
        got = await cache.get("h-r")
        assert got is not None and not got.active
    assert store.reads == 6


async def test_a_write_here_is_seen_at_once() -> None:
    store = Counting()
    a = cred("h-a")
    await store.add_credential(a)
    cache = CredentialCache(store)
    assert await cache.get("h-a") == a
    await store.update_credential(a.id, revoked_at=T0 + 1)
    await cache.settled()  # what Access.revoke does after its write
    got = await cache.get("h-a")
    assert got is not None and not got.active
    assert store.reads == 2


async def test_settled_waits_for_nothing_with_one_writer() -> None:
    cache = CredentialCache(Counting(), check_seconds=30.0)
    await asyncio.wait_for(cache.settled(), 1.0)


async def test_a_read_under_way_when_a_write_lands_here_is_not_kept() -> None:
    """The read began before the revocation and answers after it: what it read is the
    credential as it was, and must not outlive the write's `forget`."""
    store = Counting()
    a = cred("h-a")
    await store.add_credential(a)
    cache = CredentialCache(store)
    await cache.get("h-nobody")  # learns there is one writer
    store.hold = asyncio.Event()
    reading = asyncio.create_task(cache.get("h-a"))
    await asyncio.sleep(0.01)
    await store.update_credential(a.id, revoked_at=T0 + 1)
    cache.forget()
    store.hold.set()
    assert await reading == a  # the request that began before the revocation
    store.hold = None
    got = await cache.get("h-a")
    assert got is not None and not got.active


async def test_another_replica_s_write_is_seen_within_check_seconds() -> None:
    store, clock = Counting(version=7), Clock()
    a = cred("h-a")
    await store.add_credential(a)
    cache = CredentialCache(store, check_seconds=1.0, clock=clock)
    assert await cache.get("h-a") == a
    assert (store.reads, store.version_reads) == (1, 1)
    # another replica revokes: the count moves, this replica's cache does not know yet
    await store.update_credential(a.id, revoked_at=T0 + 1)
    store.version = 8
    clock.now += 0.5
    assert await cache.get("h-a") == a  # within check_seconds of the last check
    assert store.version_reads == 1
    clock.now += 0.5  # check_seconds since the check began: read the count again
    got = await cache.get("h-a")
    assert got is not None and not got.active
    assert (store.reads, store.version_reads) == (2, 2)


async def test_an_unchanged_count_keeps_the_cache_and_one_check_serves_all_waiting() -> None:
    store, clock = Counting(version=3), Clock()
    creds = [cred(f"h-{i}") for i in range(20)]
    for c in creds:
        await store.add_credential(c)
    cache = CredentialCache(store, check_seconds=1.0, clock=clock)
    await cache.get(creds[0].secret_hash)  # the first use learns that others write too
    await asyncio.gather(*(cache.get(c.secret_hash) for c in creds))
    assert store.version_reads == 1 and store.reads == 20
    clock.now += 5.0
    got = await asyncio.gather(*(cache.get(c.secret_hash) for c in creds))
    assert got == creds
    assert store.version_reads == 2 and store.reads == 20  # one check for the twenty


async def test_settled_waits_check_seconds_when_others_write_too() -> None:
    cache = CredentialCache(Counting(version=1), check_seconds=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await cache.settled()
    assert loop.time() - began >= 0.3


class SlowAnswer(Counting):
    """The count is read when the statement runs; its answer arrives later."""

    def __init__(self) -> None:
        super().__init__(version=1)
        self.answer: asyncio.Event | None = None

    async def credentials_version(self) -> int | None:
        self.version_reads += 1
        seen = self.version  # what the database had when the statement ran
        if self.answer is not None:
            await self.answer.wait()
        return seen


async def test_a_check_that_began_too_long_before_a_request_does_not_answer_it() -> None:
    """A request that arrives after a revocation answered joins a check whose read predates
    the revocation (its answer came late): it must not be answered from the cache (found
    by a review)."""
    store, clock = SlowAnswer(), Clock()
    c = cred("h")
    await store.add_credential(c)
    cache = CredentialCache(store, check_seconds=1.0, clock=clock)
    assert await cache.get("h") == c  # kept
    clock.now += 1.5
    store.answer = asyncio.Event()
    early = asyncio.create_task(cache.get("h"))  # starts a check: reads count 1
    await asyncio.sleep(0.01)
    # revoked elsewhere: the count moves; the revoking replica answers check_seconds later
    await store.update_credential(c.id, revoked_at=T0 + 1)
    store.version = 2
    clock.now += 1.1  # the revocation has answered
    late = asyncio.create_task(cache.get("h"))  # arrives now and joins the old check
    await asyncio.sleep(0.01)
    store.answer.set()
    await early  # it arrived before the revocation: either answer is right for it
    got = await late
    assert got is not None and not got.active


async def test_a_store_slower_than_check_seconds_is_read_for_each_request() -> None:
    """When every check answers later than check_seconds, nothing kept may answer: the
    request reads the store itself (and the answer is not kept)."""

    class Slow(Counting):
        def __init__(self, clock: Clock) -> None:
            super().__init__(version=1)
            self.clock = clock

        async def credentials_version(self) -> int | None:
            self.version_reads += 1
            self.clock.now += 2.0  # each check takes two "seconds"
            return self.version

    clock = Clock()
    store = Slow(clock)
    c = cred("h")
    await store.add_credential(c)
    cache = CredentialCache(store, check_seconds=1.0, clock=clock)
    for _ in range(3):
        assert await cache.get("h") == c
    assert store.reads == 3
