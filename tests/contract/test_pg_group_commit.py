"""Group commit on PostgreSQL: concurrent calls do share statements, each caller still gets
its own outcome, a row someone else holds or a row that breaks the statement is handled
one by one, and nothing is answered before it is committed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from berth.domain.delivery import DeliveryStatus
from berth.ports import Settle
from tests.contract.conftest import fresh_schema
from tests.contract.test_store import LEASE, T0, accept_many, claim, ids, make_d

pytestmark = pytest.mark.postgres
D = DeliveryStatus


@pytest.fixture
async def pg() -> AsyncIterator[tuple[Any, str]]:
    from berth.adapters.sql.postgres import PostgresStore

    async with fresh_schema() as url:
        store = PostgresStore(url, min_size=1, max_size=6)
        await store.migrate()
        try:
            yield store, url
        finally:
            await store.close()


async def _other_connection(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url)


async def test_accepts_claims_and_settles_share_one_flush(pg: tuple[Any, str]) -> None:
    store, _ = pg
    ds = await accept_many(store, "w1", 3)
    (waiting,) = await accept_many(store, "w2", 1)
    await claim(store, "w1")
    before = store.writes.batches
    blocker = asyncio.create_task(store.accept(make_d("w9", "first")))  # runs alone
    await asyncio.sleep(0)
    got = await asyncio.gather(
        *(store.settle(d.id, "a", Settle(D.DONE), T0) for d in ds),
        store.accept(make_d("w3", "m")),
        claim(store, "w2", owner="b"),
    )
    await blocker
    assert store.writes.batches - before == 2  # all five in the flush after the first
    assert all(s is not None and s.status is D.DONE for s in got[:3])
    assert got[3][1] and ids(got[4]) == [waiting.id]


async def test_concurrent_calls_share_statements_and_are_committed_when_answered(
    pg: tuple[Any, str],
) -> None:
    store, url = pg
    writes = store.writes
    got = await asyncio.gather(*(store.accept(make_d(f"w{i % 4}", f"m{i}")) for i in range(40)))
    assert all(created for _, created in got)
    assert writes.items == 40 and writes.batches <= 3  # 1 alone, then the rest
    other = await _other_connection(url)
    try:  # every answered accept is visible to another session: committed
        n = await other.fetchval("SELECT count(*) FROM deliveries")
        assert n == 40
        before = writes.batches
        claimed = await asyncio.gather(*(claim(store, f"w{i}", capacity=None) for i in range(4)))
        assert sorted(len(c) for c in claimed) == [10, 10, 10, 10]
        assert writes.batches - before <= 2
        before = writes.batches
        settled = await asyncio.gather(
            *(store.settle(d.id, "a", Settle(D.DONE), T0) for c in claimed for d in c)
        )
        assert all(s is not None and s.status is D.DONE for s in settled)
        assert writes.batches - before <= 2
        assert await other.fetchval("SELECT count(*) FROM deliveries WHERE status = 'done'") == 40
    finally:
        await other.close()


async def test_a_row_that_breaks_the_batch_fails_alone(pg: tuple[Any, str]) -> None:
    import asyncpg

    store, _ = pg
    ds = [make_d("w1", f"m{i}") for i in range(6)]
    clash = make_d("w1", "other", id=ds[3].id)  # the same delivery id, another message
    got = await asyncio.gather(*(store.accept(d) for d in [*ds, clash]), return_exceptions=True)
    errors = [g for g in got if isinstance(g, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], asyncpg.UniqueViolationError)
    assert len([g for g in got if not isinstance(g, BaseException)]) == 6
    assert store.writes.retried >= 2  # the failed batch was run again item by item


async def test_a_flush_never_waits_for_a_row_lock(pg: tuple[Any, str]) -> None:
    """A row locked elsewhere (a restart's requeue, say) fails the flush at once (NOWAIT);
    its calls then run one by one, the locked settle waiting its turn as it always did, and
    the accept and claim that shared the flush are not lost with it."""
    store, url = pg
    ds = await accept_many(store, "w1", 5)
    (queued,) = await accept_many(store, "w2", 1)
    await claim(store, "w1")
    other = await _other_connection(url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", ds[2].id)
        calls = asyncio.gather(
            *(store.settle(d.id, "a", Settle(D.DONE, reply=b"r"), T0) for d in ds),
            store.accept(make_d("w3", "new")),
            claim(store, "w2", owner="b"),
        )
        await asyncio.sleep(0.3)
        await tx.rollback()
        *settled, (accepted, created), claimed = await asyncio.wait_for(calls, 10)
    finally:
        await other.close()
    assert [g.status if g else None for g in settled] == [D.DONE] * 5
    assert created and accepted.message_id == "new" and ids(claimed) == [queued.id]
    assert store.writes.retried >= 2  # the flush gave up and its calls ran again


async def test_claim_batches_of_two_replicas_do_not_deadlock(pg: tuple[Any, str]) -> None:
    """Replicas claiming the same workspaces in opposite orders, many times over."""
    from berth.adapters.sql.postgres import PostgresStore

    store, url = pg
    second = PostgresStore(url, min_size=1, max_size=6)
    wss = [f"w{i}" for i in range(10)]
    for ws in wss:
        await accept_many(store, ws, 30)
    try:
        for r in range(30):
            order = wss if r % 2 else wss[::-1]
            got = await asyncio.wait_for(
                asyncio.gather(
                    *(claim(store, ws, capacity=1, owner="a", now=T0 + r) for ws in order),
                    *(claim(second, ws, capacity=1, owner="b", now=T0 + r) for ws in order[::-1]),
                ),
                10,
            )
            for ds in got:
                for d in ds:
                    who = store if d.lease_owner == "a" else second
                    await who.settle(d.id, d.lease_owner, Settle(D.DONE), T0)
            assert sum(len(ds) for ds in got) == len(wss)  # capacity 1 each, always work left
    finally:
        await second.close()
    assert second.writes.batches < second.writes.items
    assert store.writes.retried == second.writes.retried == 0  # no deadlock was detected


async def test_group_commit_off_runs_the_single_statements(pg: tuple[Any, str]) -> None:
    from berth.adapters.sql.postgres import PostgresStore

    _, url = pg
    off = PostgresStore(url, min_size=1, max_size=6, group_commit=False)
    try:
        got = await asyncio.gather(*(off.accept(make_d("w9", f"m{i}")) for i in range(5)))
        assert all(c for _, c in got) and off.writes.batches == 5 and not off.writes._running
        claimed = await off.claim("w9", capacity=2, owner="o", lease_seconds=LEASE, now=T0)
        assert len(claimed) == 2
    finally:
        await off.close()


async def test_accept_flushes_of_two_replicas_insert_in_one_order(pg: tuple[Any, str]) -> None:
    """Retries of the same messages reaching two replicas at once, in opposite orders, both
    flushes held up halfway by a third session's uncommitted insert of the middle message:
    without one order of inserts they would deadlock. Each message is accepted once and
    both callers get its row."""
    import asyncpg

    from berth.adapters.sql.postgres import PostgresStore

    store, url = pg
    second = PostgresStore(url, min_size=1, max_size=6)
    keys = [f"m{i:02}" for i in range(20)]
    held = await _other_connection(url)
    try:
        tx = held.transaction()
        await tx.start()
        mid = make_d("w1", keys[10])
        await held.execute(
            "INSERT INTO deliveries (id, workspace_id, message_id, method, request, status, "
            "created_at, updated_at) VALUES ($1, 'w1', $2, 'x', '', 'queued', 0, 0)",
            mid.id,
            mid.message_id,
        )
        up = [asyncio.create_task(store.accept(make_d("w1", k))) for k in keys]
        down = [asyncio.create_task(second.accept(make_d("w1", k))) for k in keys[::-1]]
        await asyncio.sleep(0.3)
        await tx.rollback()
        got = await asyncio.wait_for(asyncio.gather(*up, *down, return_exceptions=True), 10)
    finally:
        await held.close()
        await second.close()
    assert not [g for g in got if isinstance(g, asyncpg.DeadlockDetectedError)]
    assert store.writes.retried == second.writes.retried == 0  # no flush failed
    by_msg: dict[str, list[tuple[Any, bool]]] = {}
    for stored, created in got:  # type: ignore[misc]
        by_msg.setdefault(stored.message_id, []).append((stored, created))
    assert sorted(by_msg) == keys
    for pair in by_msg.values():
        assert pair[0][0] == pair[1][0] and sorted(c for _, c in pair) == [False, True]


async def test_claim_many_takes_its_locks_in_one_global_order(pg: tuple[Any, str]) -> None:
    """Two berth_claim_many calls given the same workspaces in opposite orders, both held up
    halfway by a third session: without one global lock order they would deadlock."""
    import asyncpg

    from berth.adapters.sql.postgres_base import _CLAIM_LOCK_CLASS

    store, url = pg
    wss = [f"w{i}" for i in range(9)]
    for ws in wss:
        await accept_many(store, ws, 2)
    keys = {ws: await store._fetchrow("SELECT hashtext($1) AS h", ws) for ws in wss}
    by_key = sorted(wss, key=lambda ws: keys[ws]["h"])
    held, a, b = [await _other_connection(url) for _ in range(3)]
    sql = (
        "SELECT * FROM berth_claim_many($1::text[], $2::int[], $3::text[], $4::float8[], "
        "$5::float8[], $6::text[], $7::boolean[])"
    )

    def args(order: list[str], owner: str) -> list[Any]:
        n = len(order)
        return [order, [1] * n, [owner] * n, [T0] * n, [T0 + LEASE] * n, [None] * n, [False] * n]

    try:
        tx = held.transaction()
        await tx.start()
        await held.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CLAIM_LOCK_CLASS, by_key[4]
        )
        up = asyncio.create_task(a.fetch(sql, *args(by_key, "a")))
        down = asyncio.create_task(b.fetch(sql, *args(by_key[::-1], "b")))
        await asyncio.sleep(0.3)
        await tx.rollback()
        got = await asyncio.wait_for(asyncio.gather(up, down, return_exceptions=True), 10)
    finally:
        for c in (held, a, b):
            await c.close()
    assert not [g for g in got if isinstance(g, asyncpg.DeadlockDetectedError)]
    assert sum(len(g) for g in got) == len(wss)  # capacity 1 each: one claim per workspace


async def _accept_claim(store: Any, ws: str, msg: str, capacity: int | None) -> Any:
    return await store.accept_claim(
        make_d(ws, msg), capacity=capacity, owner="me", lease_seconds=LEASE, now=T0 + 1
    )


async def test_accept_claim_is_one_flush_and_committed_when_answered(
    pg: tuple[Any, str],
) -> None:
    """The proxy's accept_claim waits for one commit, not an accept's and then a claim's."""
    store, url = pg
    before, statements = store.writes.batches, store.writes.items
    d, created, got = await _accept_claim(store, "w1", "m1", 2)
    assert (store.writes.batches - before, store.writes.items - statements) == (1, 1)
    assert created and d.status is D.IN_FLIGHT and got == [d]
    other = await _other_connection(url)
    try:  # claimed and committed: another session sees the lease
        row = await other.fetchrow("SELECT status, lease_owner FROM deliveries WHERE id = $1", d.id)
        assert (row["status"], row["lease_owner"]) == (D.IN_FLIGHT.value, "me")
    finally:
        await other.close()


async def test_concurrent_accept_claims_of_one_workspace_hand_each_claim_out_once(
    pg: tuple[Any, str],
) -> None:
    """Many accept_claims in one flush: their claims run one after the other in its
    transaction, so the workspace's capacity holds, each claimed delivery is handed to
    exactly one caller (it is forwarded once), and each caller's own row is returned as the
    flush left it (claimed by its own claim or by an earlier one's)."""
    store, _ = pg
    await store.accept(make_d("w1", "old"))  # an older one waiting: claimed first
    before = store.writes.batches
    blocker = asyncio.create_task(store.accept(make_d("w9", "first")))  # runs alone
    await asyncio.sleep(0)
    got = await asyncio.gather(*(_accept_claim(store, "w1", f"m{i}", 4) for i in range(8)))
    await blocker
    assert store.writes.batches - before == 2  # the eight shared the flush after the first
    handed = [g for _, _, gs in got for g in gs]
    assert len(handed) == 4 and len({g.id for g in handed}) == 4  # capacity, each once
    assert [len(gs) for _, _, gs in got] == [4] + [0] * 7  # one claim, to the first caller
    assert sorted(g.message_id for g in handed) == ["m0", "m1", "m2", "old"]
    mine = {d.message_id: d.status for d, created, _ in got if created}
    assert len(mine) == 8
    assert mine == {f"m{i}": D.IN_FLIGHT if i < 3 else D.QUEUED for i in range(8)}
    assert await store.pending("w1") == (5, 4)


async def test_accept_claim_of_a_duplicate_in_a_flush_claims_nothing(
    pg: tuple[Any, str],
) -> None:
    store, _ = pg
    await store.accept(make_d("w1", "old"))
    first, _ = await store.accept(make_d("w1", "dup"))
    blocker = asyncio.create_task(store.accept(make_d("w9", "first")))
    await asyncio.sleep(0)
    (d, created, got), (other, other_created, other_got) = await asyncio.gather(
        _accept_claim(store, "w1", "dup", 4), _accept_claim(store, "w2", "fresh", 4)
    )
    await blocker
    assert (d.id, created, got) == (first.id, False, [])  # nothing of w1 claimed
    assert other_created and other_got == [other] and other.status is D.IN_FLIGHT
    assert await store.pending("w1") == (2, 0)


async def test_a_plain_claim_and_accept_claims_of_one_workspace_in_one_flush(
    pg: tuple[Any, str],
) -> None:
    """The dispatcher's claim and the proxy's accept_claims of one workspace in one flush:
    the claims run in arrival order in its transaction and each delivery is handed out
    once."""
    store, _ = pg
    await store.accept(make_d("w1", "old"))
    before = store.writes.batches
    blocker = asyncio.create_task(store.accept(make_d("w9", "first")))
    await asyncio.sleep(0)
    plain, *calls = await asyncio.gather(
        claim(store, "w1", capacity=3, owner="me"),
        *(_accept_claim(store, "w1", f"m{i}", 3) for i in range(2)),
    )
    await blocker
    assert store.writes.batches - before == 2
    # the accepts are written before the claims, the two new messages in flight already:
    # the plain claim, first, counts them and takes the one queued; the accept_claims'
    # claim keeps theirs (capacity 3 holds) and hands both to its first caller
    assert [d.message_id for d in plain] == ["old"]
    assert [(d.status, created, [g.message_id for g in got]) for d, created, got in calls] == [
        (D.IN_FLIGHT, True, ["m0", "m1"]),
        (D.IN_FLIGHT, True, []),
    ]
    assert await store.pending("w1") == (0, 3)


async def test_an_item_that_fails_after_the_flush_committed_fails_alone(
    pg: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accept whose conflicting row is gone by the time the flush looks it up is run
    alone after the flush committed; if that fails, only its caller gets the error: the
    settle, the accept and the claim the same flush committed are answered as done (run
    again, the settle would find its delivery settled and the accept a duplicate)."""
    from berth.domain.errors import StoreUnavailable

    store, _ = pg
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1")
    await store.accept(make_d("w2", "dup"))
    real_fetch = store._fetch

    async def no_existing(sql: str, *args: Any) -> Any:  # as if the conflicting row went
        return [r for r in await real_fetch(sql, *args) if r.get("w_kind") != "existing"]

    async def away(_: Any) -> Any:
        raise StoreUnavailable("the database went away")

    monkeypatch.setattr(store, "_fetch", no_existing)
    monkeypatch.setattr(store, "_accept_one", away)
    blocker = asyncio.create_task(claim(store, "w9"))  # runs alone
    await asyncio.sleep(0)
    settled, fresh, dup, claimed = await asyncio.gather(
        store.settle(d.id, "a", Settle(D.DONE), T0),
        store.accept(make_d("w3", "new")),
        store.accept(make_d("w2", "dup")),
        _accept_claim(store, "w4", "m", 2),
        return_exceptions=True,
    )
    await blocker
    assert isinstance(dup, StoreUnavailable)
    assert settled is not None and settled.status is D.DONE  # type: ignore[union-attr]
    assert fresh[1] is True  # type: ignore[index]
    assert claimed[1] is True and claimed[0].status is D.IN_FLIGHT  # type: ignore[index]
    assert store.writes.retried == 0  # nothing ran twice


async def test_a_shared_claim_goes_to_a_caller_whose_accept_created_its_delivery(
    pg: tuple[Any, str],
) -> None:
    """The first accept_claim of the workspace in the flush is a duplicate: the claim is
    still made (the second one's accept created its delivery), and what it took goes to
    the second caller, who forwards it."""
    store, _ = pg
    first, _ = await store.accept(make_d("w1", "dup"))
    blocker = asyncio.create_task(claim(store, "w9"))
    await asyncio.sleep(0)
    (d, created, got), (e, e_created, e_got) = await asyncio.gather(
        _accept_claim(store, "w1", "dup", 4), _accept_claim(store, "w1", "new", 4)
    )
    await blocker
    assert (d.id, created, got) == (first.id, False, [])
    assert e_created and e.status is D.IN_FLIGHT
    assert sorted(g.message_id for g in e_got) == ["dup", "new"]


async def test_a_claim_that_ran_for_no_created_delivery_is_still_handed_out(
    pg: tuple[Any, str],
) -> None:
    """Ids are fresh, so a shared claim runs only when one of its callers created a
    delivery. Should that ever not hold (the same delivery accepted again), what the claim
    took still goes to a caller to forward, not to nobody (in flight until its lease)."""
    store, _ = pg
    d = make_d("w1", "again")
    await store.accept(d)
    stored, created, got = await store.accept_claim(
        d, capacity=4, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert not created and [g.id for g in got] == [d.id]
    assert got[0].status is D.IN_FLIGHT


async def test_a_delivery_id_with_a_space_is_refused_before_the_claim() -> None:
    from berth.adapters.sql.postgres_batch import _no_space

    assert _no_space("0190-ab") == "0190-ab"
    with pytest.raises(ValueError):
        _no_space("a b")


# A message that may go at once is written in flight: one row version, not a queued insert
# and a claim's update. These count the updates of deliveries with a trigger.
async def _count_updates(url: str) -> Any:
    other = await _other_connection(url)
    await other.execute(
        """
        CREATE TABLE IF NOT EXISTS t_updates (n bigint NOT NULL);
        INSERT INTO t_updates SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM t_updates);
        CREATE OR REPLACE FUNCTION t_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE t_updates SET n = n + 1; RETURN NEW; END $$;
        CREATE TRIGGER t_count BEFORE UPDATE ON deliveries FOR EACH ROW EXECUTE FUNCTION t_count();
        """
    )
    return other


async def test_a_message_to_an_idle_workspace_is_written_in_flight_once(
    pg: tuple[Any, str],
) -> None:
    store, url = pg
    other = await _count_updates(url)
    try:
        d, created, got = await _accept_claim(store, "w1", "m1", 2)
        assert created and got == [d] and d.status is D.IN_FLIGHT and d.forwards == 1
        assert await other.fetchval("SELECT n FROM t_updates") == 0  # inserted in flight
        row = await other.fetchrow(
            "SELECT status, lease_owner, lease_until, forwards, first_forwarded_at "
            "FROM deliveries WHERE id = $1",
            d.id,
        )
        assert tuple(row) == (D.IN_FLIGHT.value, "me", T0 + 1 + LEASE, 1, T0 + 1)
        # older work queued: the new message goes back in the queue and the claim takes the
        # oldest first, as when accepting queued and claiming
        await store.accept(make_d("w2", "old"))
        e, created, got = await _accept_claim(store, "w2", "new", 1)
        assert created and e.status is D.QUEUED and e.forwards == 0
        assert e.lease_owner is None and e.first_forwarded_at is None
        assert [g.message_id for g in got] == ["old"]
        assert await store.pending("w2") == (1, 1)
    finally:
        await other.close()


async def test_accept_claims_over_the_capacity_keep_the_oldest_and_queue_the_rest(
    pg: tuple[Any, str],
) -> None:
    """Six messages in one flush to a workspace with room for four, one of them in flight
    already: the three oldest stay in flight (one claim, one caller), the others go back
    in the queue as if never claimed."""
    store, _ = pg
    (busy,) = await accept_many(store, "w1", 1)
    await claim(store, "w1", capacity=4, owner="x")
    blocker = asyncio.create_task(store.accept(make_d("w9", "first")))
    await asyncio.sleep(0)
    got = await asyncio.gather(*(_accept_claim(store, "w1", f"n{i}", 4) for i in range(6)))
    await blocker
    handed = [g for _, _, gs in got for g in gs]
    assert [len(gs) for _, _, gs in got] == [3, 0, 0, 0, 0, 0]
    by_seq = sorted((d for d, _, _ in got), key=lambda d: d.seq)
    assert {g.id for g in handed} == {d.id for d in by_seq[:3]}
    assert [d.status for d in by_seq] == [D.IN_FLIGHT] * 3 + [D.QUEUED] * 3
    for d in by_seq[3:]:
        stored = await store.get_delivery(d.id)
        assert stored == d and stored.forwards == 0 and stored.lease_owner is None
    assert await store.pending("w1") == (3, 4)
    assert busy.id not in {g.id for g in handed}


async def test_accept_claims_of_two_replicas_never_exceed_the_capacity(
    pg: tuple[Any, str],
) -> None:
    """Two replicas write messages to the same workspaces in flight, concurrently, many
    times over (each flush's rows are invisible to the other until it commits): under the
    workspace's lock each claim counts what is in flight, so capacity 1 holds, every
    message is handed out once or left queued, and no flush deadlocks."""
    from berth.adapters.sql.postgres import PostgresStore

    store, url = pg
    second = PostgresStore(url, min_size=1, max_size=6)
    wss = [f"w{i}" for i in range(6)]
    handed: list[str] = []
    try:
        for r in range(20):
            order = wss if r % 2 else wss[::-1]
            got = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        s.accept_claim(
                            make_d(ws, f"{who}{r}"),
                            capacity=1,
                            owner=who,
                            lease_seconds=LEASE,
                            now=T0 + r,
                        )
                        for s, who, wss_in in ((store, "a", order), (second, "b", order[::-1]))
                        for ws in wss_in
                    )
                ),
                10,
            )
            assert all(created for _, created, _ in got)
            for ws in wss:
                _, in_flight = await store.pending(ws)
                assert in_flight <= 1
            for _, _, gs in got:
                for g in gs:
                    handed.append(g.id)
                    who = store if g.lease_owner == "a" else second
                    assert await who.settle(g.id, g.lease_owner, Settle(D.DONE), T0) is not None
        assert len(handed) == len(set(handed))  # each delivery forwarded once
        left = [await store.pending(ws) for ws in wss]
        assert sum(q for q, _ in left) + len(handed) == 2 * 20 * len(wss)
        assert all(f == 0 for _, f in left)
    finally:
        await second.close()
    assert store.writes.retried == second.writes.retried == 0  # no deadlock was detected


async def test_a_message_written_in_flight_waits_for_the_workspace_lock(
    pg: tuple[Any, str],
) -> None:
    """Two replicas' messages to one workspace of capacity 1, both written in flight while
    a third session holds the workspace's claim lock: each flush checks under the lock, so
    the second to get it counts the first's committed row and queues its own."""
    from berth.adapters.sql.postgres import PostgresStore
    from berth.adapters.sql.postgres_base import _CLAIM_LOCK_CLASS

    store, url = pg
    second = PostgresStore(url, min_size=1, max_size=6)
    held = await _other_connection(url)
    try:
        tx = held.transaction()
        await tx.start()
        await held.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", _CLAIM_LOCK_CLASS, "w1"
        )
        calls = [
            asyncio.create_task(
                s.accept_claim(
                    make_d("w1", who), capacity=1, owner=who, lease_seconds=LEASE, now=T0
                )
            )
            for s, who in ((store, "a"), (second, "b"))
        ]
        await asyncio.sleep(0.3)
        assert not any(c.done() for c in calls)  # both wait for the lock, rows written
        await tx.rollback()
        got = await asyncio.wait_for(asyncio.gather(*calls), 10)
    finally:
        await held.close()
        await second.close()
    assert sorted(d.status.value for d, _, _ in got) == ["in_flight", "queued"]
    assert sorted(len(gs) for _, _, gs in got) == [0, 1]
    assert await store.pending("w1") == (1, 1)


async def test_a_delivery_accepted_again_while_in_flight_is_not_handed_out_again(
    pg: tuple[Any, str],
) -> None:
    """The same delivery accept_claimed twice, the same time and owner (ids are fresh in
    berth, so this is the guard of a case that should not arise): the second claim must
    not take the first's row, in flight and being forwarded, for one it wrote itself:
    nothing handed out again, nothing put back in the queue (found by a review)."""
    store, _ = pg
    d = make_d("w1", "again")
    _, created, got = await store.accept_claim(
        d, capacity=4, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert created and [g.id for g in got] == [d.id]
    _, created, got = await store.accept_claim(
        d, capacity=4, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert not created and got == []
    e = make_d("w2", "again")
    _, created, got = await store.accept_claim(
        e, capacity=1, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert created and [g.id for g in got] == [e.id]
    await store.accept(make_d("w2", "later"))  # queued behind it
    _, created, again = await store.accept_claim(
        e, capacity=1, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert not created and again == []
    stored = await store.get_delivery(e.id)
    assert stored.status is D.IN_FLIGHT and stored.forwards == 1
    assert await store.pending("w2") == (1, 1)


async def test_two_claims_of_one_workspace_in_a_flush_keep_its_order(pg: tuple[Any, str]) -> None:
    """The accept_claims of one workspace share a claim per capacity: a capacity changed
    between two of them makes two claims in one flush. The first (capacity 1, full) puts its
    message back in the queue; the second must then see it as older work and claim oldest
    first, as one claim after the other would (found by review: the all-in-flight path
    decided the second before the first had put anything back)."""
    from berth.adapters.sql.postgres_batch import AcceptClaimCall, ClaimCall

    store, _ = pg

    def call(msg: str, cap: int) -> AcceptClaimCall:
        return AcceptClaimCall(make_d("w1", msg), ClaimCall("w1", cap, "me", T0 + 1, T0 + LEASE))

    out = await store._write_many([call("a", 1), call("b1", 5), call("b2", 5)])
    status = {m: (await store.find_delivery("w1", m)).status for m in ("a", "b1", "b2")}
    assert status == {"a": D.IN_FLIGHT, "b1": D.IN_FLIGHT, "b2": D.IN_FLIGHT}
    assert sorted(g.message_id for o in out for g in o[2]) == ["a", "b1", "b2"]


async def test_a_flush_after_a_newer_version_added_a_column_is_answered(
    pg: tuple[Any, str],
) -> None:
    """A rolling deploy: a newer berth's migration adds a column to `deliveries` while this
    version's pooled connections run. Its next flush must still answer its callers (it
    commits before its rows are read: a row this version cannot decode would leave an
    accepted message leased and its caller with an error; found by review when the rows
    came back as one composite value, whose layout asyncpg caches per connection)."""
    store, url = pg
    stored, created, _ = await store.accept_claim(
        make_d("w1", "warm"), capacity=None, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert created
    other = await _other_connection(url)
    try:
        await other.execute("ALTER TABLE deliveries ADD COLUMN from_a_newer_version text")
    finally:
        await other.close()
    stored, created, claimed = await store.accept_claim(
        make_d("w1", "m1"), capacity=None, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    assert created and [g.message_id for g in claimed] == ["m1"]
    settled = await store.settle(stored.id, "me", Settle(D.DONE, reply=b"{}"), T0 + 2)
    assert settled is not None and settled.status is D.DONE
